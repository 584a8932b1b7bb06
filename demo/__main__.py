import argparse

from .app import add_demo_arguments, run_demo

parser = argparse.ArgumentParser(prog="python -m longclip_diffusers.demo", description="Long-CLIP vs CLIP demo")
add_demo_arguments(parser)
print(run_demo(parser.parse_args()))
