"""``python -m ota.serve``: the same as ``edgefleet serve`` / ``edgefleet-serve``."""

from ota.serve.cli import serve_main

serve_main()
