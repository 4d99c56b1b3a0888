"""A request to the batcher (prompt, length, sampling settings; its bytes arrive on a queue) and the UTF-8
pieces of its byte stream."""

from __future__ import annotations

import codecs
import dataclasses
import queue
import time


@dataclasses.dataclass
class Request:
    prompt: bytes
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    out: queue.Queue = dataclasses.field(default_factory=queue.Queue)  # bytes chunks, then None
    emitted: int = 0
    dispatched: int = 0  # bytes asked of the device so far (emitted + the chunk in flight)
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_byte: float | None = None
    error: str | None = None

    def chunks(self):
        """Yield the output as bytes chunks until the request ends (raises on a server error)."""
        while True:
            item = self.out.get()
            if item is None:
                if self.error:
                    raise RuntimeError(self.error)
                return
            yield item

    def result(self) -> bytes:
        return b"".join(self.chunks())


def utf8_pieces(chunks):
    """Text pieces of a byte stream, never splitting a UTF-8 character across pieces (bad bytes -> U+FFFD)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for c in chunks:
        text = dec.decode(c)
        if text:
            yield text
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
