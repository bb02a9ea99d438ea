"""``python -m charlm.visualize ckpt=... text=...`` (the same as ``charlm-visualize``)."""

from charlm.cli.visualize import main

if __name__ == "__main__":
    main()
