"""moe-market node: the expert server, the verifier, the HTTP gateway and the `moe` command line.

`node` imports `market`; `market` never imports `node`.
"""
