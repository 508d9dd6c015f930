"""``chiron serve``: one service for a site, a face over the engines like the CLI.

A package index (PEP 503/691/658/714) over the wheels of verified appliances, appliances, signatures
and on-demand deltas for download (Range, If-Range, strong ETags, zero-copy), signed install
receipts and the fleet view, refresh jobs on a mirror store, tokens with scopes, RFC 9457 problems,
health, readiness and Prometheus metrics. Nothing here is trusted by a host: hosts verify everything
they download against their own trusted metadata. See docs/serve.md.

FastAPI, uvicorn and prometheus-client are the ``serve`` extra and are imported only by this package,
so ``chiron --help`` and ``verify`` never pay for them.
"""
