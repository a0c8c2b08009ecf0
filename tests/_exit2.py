"""One check for hostile input, shared by the hardening tests: exit 2, an ``invalid input:`` line that
names every given word and a fix, no traceback, and (given ``root``) no file under it created or changed."""

from __future__ import annotations

import os
from pathlib import Path

from ascend_jax.cli import main


def tree(root: Path) -> dict[str, bytes]:
    """Every path under ``root`` with its bytes (links as their target, folders as b"")."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
    return out


def exit_2(capsys, argv: list[str], *words: str, root: Path | None = None) -> str:
    """Runs ``argv``; expects exit 2 and an ``invalid input:`` line holding every one of ``words``
    (field, value, rule) and a fix, no traceback, and no file under ``root`` created or changed."""
    before = tree(root) if root is not None else None
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in out + err and "internal error" not in err
    line = next(x for x in err.splitlines() if x.startswith("invalid input: "))
    for w in words:
        assert w in line, (w, line)
    assert "(fix: " in line, line
    if root is not None:
        assert tree(root) == before
    return line
