"""Bulk inference: python infer.py input=DIR_OR_GLOB output=DIR model_path=... device=cpu|cuda

With no arguments it runs the shipped model on the built-in sample data. ``python infer.py --help``
lists the main options; the same command is installed as ``fracscope-infer``.
"""

from fracscope.infer import main

if __name__ == "__main__":
    main()
