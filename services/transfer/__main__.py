"""``python -m services.transfer [--port P]``: the transfer API (with in-process workers).
``python -m services.transfer worker [--count N]``: transfer workers only, no HTTP."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    from .workerproc import main

    main(sys.argv[2:])
else:
    from shared.runtime import serve_main

    from .app import create_app

    serve_main("transfer", create_app)
