"""`python -m cogql` is the `cogql` command."""

from .cli import main

if __name__ == "__main__":  # vLLM's engine process re-imports the main module (spawn)
    main()
