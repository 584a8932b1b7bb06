import argparse

from .app import add_demo_arguments, run_demo

parser = argparse.ArgumentParser(prog="python -m longclip_diffusers.demo", description="Long-CLIP vs CLIP demo")
add_demo_arguments(parser)
try:
    print(run_demo(parser.parse_args()))
except (ValueError, OSError) as error:  # a path that is not there, models that do not load: one line
    parser.exit(1, f"{parser.prog}: error: {error}\n")
