from shared.runtime import serve_main

from .app import create_app

serve_main("registry", create_app)
