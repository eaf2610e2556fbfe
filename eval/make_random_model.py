"""Write a randomly initialised full-size pipeline (real public architecture, random weights) as a local
diffusers folder, to exercise the real-model path of semu-erase / semu-eval offline:

    python eval/make_random_model.py --arch sd15 --out /tmp/sd15-random
    semu-erase --model /tmp/sd15-random --concept "a red apple" --resolution 128 --steps 4 --forget-n 2 --gen-steps 4
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["sd15", "sd21", "sdxl"], default="sd15")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from semu_diffusion.fullsize import save_random_pipeline

    print(save_random_pipeline(a.arch, a.out, seed=a.seed))


if __name__ == "__main__":
    main()
