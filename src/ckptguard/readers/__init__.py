"""Parsers: bytes in, typed structures (or a typed parse error) out. No rule IDs, no
policy, no verdicts: the auditors in ``analysis/`` turn what a parser found into findings.

- ``jsonfile``: the one bounded JSON parser (and ``escape`` for untrusted text);
- ``npy``: the .npy header;
- ``zipfile``: the strict zip reader (central directory vs local headers, bounded
  inflation). It is the one reader that writes into the ``AuditContext``: the container's
  structural defects (CKG30x, CKG310-316) are found while walking the records and are
  recorded where they are found.
"""
