from fracscope.export.cli import main

raise SystemExit(main())
