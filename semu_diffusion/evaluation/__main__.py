"""``python -m semu_diffusion.evaluation ...`` = ``semu-eval ...`` (for ``accelerate launch -m``)."""
from ..cli import eval_main

if __name__ == "__main__":
    eval_main()
