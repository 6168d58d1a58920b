"""RelaySMTP._getaddr reads a plain ``<local@domain>`` by a regex: it must answer
as aiosmtpd's own (the email header parser) does, on whatever it takes."""

from __future__ import annotations

import random

from aiosmtpd.smtp import SMTP

from relay.smtp.protocol import _PLAIN_PATH, RelaySMTP


def test_plain_paths_are_read_as_aiosmtpd_reads_them() -> None:
    ours = RelaySMTP.__new__(RelaySMTP)
    theirs = SMTP.__new__(SMTP)
    for server, limit in ((ours, 64), (theirs, 64)):
        server.local_part_limit = limit
    rng = random.Random(15)
    locals_ = ["a", "bob", "x.y", "_z", "a+b", "%q", "-k", "a..b", ".a", "a.", "ü", "o'n", '"q r"']
    locals_ += ["{x}", "a=b", "a/b", "x" * 65, "a(b)", "a b"]
    domains = ["ex.org", "a-b.c", "-x.org", "x..org", "ex", "[1.2.3.4]", "EX.ORG", "ex.org."]
    tails = ["", " ", " SIZE=100", "  BODY=8BITMIME", " (comment) SIZE=1", "\tX", "(c)", ">", " <"]
    fast = 0
    for _ in range(20000):
        path = f"<{rng.choice(locals_)}@{rng.choice(domains)}>"
        arg = rng.choice(["", " "]) + path + rng.choice(tails)
        assert ours._getaddr(arg) == theirs._getaddr(arg), arg
        fast += _PLAIN_PATH.match(arg) is not None
    assert fast > 2000  # the fast path was taken, and agreed
    for arg in ("", "bob@ex.org", "<>", "<> SIZE=5", "bob@ex.org SIZE=1", "<@a,@b:c@d>"):
        assert ours._getaddr(arg) == theirs._getaddr(arg), arg
