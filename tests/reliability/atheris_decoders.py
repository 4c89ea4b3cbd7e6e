"""Coverage-guided fuzzing (atheris / libFuzzer) of the wire decoders: one frame body from the fuzzer's bytes.

Run by `test_atheris_decoders_long` (`make chaos`) as `python atheris_decoders.py -runs=N -max_len=4096 CORPUS`,
or by hand. Each input goes through what a node does with a frame body: `decode_body`, then the request and
response decoders, then `decode_tensors` on the tensor specs a message carries. The rule is the hypothesis
fuzz's (test_codec_fuzz.py): only a MarketError may come out; anything else is a crash that libFuzzer reports
with the input that caused it (exit status non-zero).
"""

from __future__ import annotations

import contextlib
import sys

import atheris
import torch  # noqa: F401 - imported first so that only the project's own modules are instrumented

with atheris.instrument_imports(include=["market"]):
    from market.errors import MarketError
    from market.protocol import codec
    from market.protocol.messages import decode_body, decode_request, decode_response

MAX_ELEMENTS = 1 << 20


def one_input(data: bytes) -> None:
    try:
        header, payload = decode_body(data)
    except MarketError:
        return
    for decode in (decode_request, decode_response):
        try:
            message = decode(header, payload)
        except MarketError:
            continue
        tensors = getattr(message, "tensors", None)
        if tensors:
            with contextlib.suppress(MarketError):
                codec.decode_tensors(tensors, payload, MAX_ELEMENTS)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
