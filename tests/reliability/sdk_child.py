"""A client process for the reliability tests: the client SDK calling one model `n` times.

Run as `python sdk_child.py DEPLOYMENT KEY_ENV STATE_DIR MODEL_HASH N PROGRESS`. After each answered call it
appends one JSON line {"eid": [...expert ids that answered]} to PROGRESS (flushed), and at the end one line
{"spent": {eid: wei}, "in_flight": wei}. The parent SIGKILLs it at a random point and starts it again with
the same STATE_DIR. The key comes from the environment variable KEY_ENV (a throwaway devnet key).
"""

from __future__ import annotations

import json
import os
import sys

import torch

from market.client import Client, ClientConfig
from market.errors import MarketError


def main() -> None:
    deployment, key_env, state_dir, model_hash, n, progress = sys.argv[1:7]
    config = ClientConfig(
        deployment=deployment, unsafe_private_key=os.environ[key_env], state_dir=state_dir,
        deadline_s=30.0, call_timeout_s=10.0, seed=11,
    )
    torch.manual_seed(0)
    with Client(config) as client, open(progress, "a") as out:
        for _ in range(int(n)):
            try:
                result = client.infer(model_hash, {"x": torch.rand(2, 64)}, redundancy=1)
                line = {"eid": sorted(result.receipts)}
            except MarketError as exc:
                line = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            out.write(json.dumps(line) + "\n")
            out.flush()
        balance = client.balance()
        out.write(json.dumps({"spent": {str(k): v for k, v in balance.spent_per_expert.items()},
                              "in_flight": balance.in_flight}) + "\n")


if __name__ == "__main__":
    main()
