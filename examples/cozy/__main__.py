import argparse

import uvicorn

from .app import create_app

parser = argparse.ArgumentParser(prog="python -m examples.cozy", description="Cozy data API contract server (COZY_TOKENS: tokens and permissions)")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8203)
args = parser.parse_args()
uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
