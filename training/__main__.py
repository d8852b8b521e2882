"""`python -m training` and `afm-train`: the command line in `training.cli`."""

from training.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
