"""``chiron mcp``: a Model Context Protocol server over chiron's engines (docs/mcp.md).

``server.build_server`` makes the server (stdio for ``chiron mcp``; ``server.http_app`` gives the
streamable-HTTP ASGI app that ``chiron serve`` mounts at ``/mcp``). The read-only tools are in ``tools``,
the ones that change something (behind the ``mcp_mutations`` flag and ``confirm: true``) in
``mutations``; ``paths`` keeps every path argument under the roots the operator allowed; ``docs``
serves the runbooks and the exit codes packaged with chiron.

The package is not called ``mcp`` so that it never shadows the SDK it is built on.
"""
