"""Offline text for the LLM recipe: document corpora (the CPython docs by default, any .txt / .jsonl
file or directory), whole-document held-out splits, tokenisation into training windows."""
import glob
import json
import os
import random
import re

import torch

# ----------------------------------------------------------------------------- text
PYTHON_DOCS_GLOB = "/usr/share/doc/python3.*/html/_sources"  # Debian: python3.11-doc
TEXT_EXT = (".txt", ".rst", ".md", ".text")


def default_text_dir():
    """The newest /usr/share/doc/python3.X/html/_sources (symlinked aliases resolved)."""
    found = {os.path.realpath(d) for d in glob.glob(PYTHON_DOCS_GLOB) if os.path.isdir(d)}
    key = lambda d: [int(v) for v in re.findall(r"python3\.(\d+)", d)[-1:]]  # noqa: E731
    return max(found, key=key) if found else None


def read_documents(path, max_docs=None):
    """A list of (doc_id, text). ``path``: a directory (every *.txt / *.rst / *.md / *.jsonl
    below it, recursively), a .txt file (one document) or a .jsonl file (one document per line,
    its "text" field)."""
    files = []
    if os.path.isdir(path):
        for dp, _, fs in os.walk(path):
            files += [os.path.join(dp, f) for f in fs if f.endswith(TEXT_EXT + (".jsonl",))]
        files.sort()
    elif os.path.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(path)
    docs = []
    for f in files:
        if f.endswith(".jsonl"):
            with open(f, encoding="utf-8", errors="replace") as fh:
                for i, line in enumerate(fh):
                    line = line.strip()
                    if line:
                        t = json.loads(line).get("text", "")
                        if t.strip():
                            docs.append((f"{f}:{i}", t))
        else:
            with open(f, encoding="utf-8", errors="replace") as fh:
                t = fh.read()
            if t.strip():
                docs.append((os.path.relpath(f, path) if os.path.isdir(path) else f, t))
        if max_docs and len(docs) >= max_docs:
            return docs[:max_docs]
    if not docs:
        raise FileNotFoundError(f"no text documents found under {path}")
    return docs


def split_documents(docs, eval_frac, seed=0):
    """Holds out whole documents (a seeded shuffle of doc ids), never pieces of one."""
    order = sorted(range(len(docs)), key=lambda i: docs[i][0])
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * eval_frac)) if len(docs) > 1 else 0
    ev = set(order[:n_eval])
    return [d for i, d in enumerate(docs) if i not in ev], [d for i, d in enumerate(docs) if i in ev]


class ByteTokenizer:
    """UTF-8 bytes as tokens (0..255), 256 = end of document. No files, no training."""
    name = "bytes"
    vocab_size = 257
    eos_token_id = 256

    def encode_batch(self, texts):
        return [list(t.encode("utf-8")) for t in texts]


class HFTokenizer:
    def __init__(self, tok):
        self.tok, self.name = tok, type(tok).__name__
        tok.model_max_length = 1 << 30  # we chunk ourselves; silence the length warning
        self.eos_token_id = tok.eos_token_id
        self.vocab_size = len(tok)

    def encode_batch(self, texts):
        return self.tok(texts, add_special_tokens=False)["input_ids"]


def tokenize_docs(tok, docs):
    ids = []
    texts = [t for _, t in docs]
    for i in range(0, len(texts), 64):
        for seq in tok.encode_batch(texts[i:i + 64]):
            ids.extend(seq)
            ids.append(tok.eos_token_id)  # document separator
    return torch.tensor(ids, dtype=torch.long)


def chunk(ids, seq_len):
    """(n, seq_len + 1) windows with stride seq_len: inputs [:-1], next-token targets [1:]."""
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"only {len(ids)} tokens: fewer than one sequence of {seq_len}")
    return ids[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)
