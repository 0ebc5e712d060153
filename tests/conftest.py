import os

# albumentations checks the network for updates at import; tests never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
