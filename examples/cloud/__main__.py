import argparse

import uvicorn

from .app import create_app

parser = argparse.ArgumentParser(prog="python -m examples.cloud")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8202)
args = parser.parse_args()
uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
