"""Offline text for the LLM recipe: document corpora read as a stream (the CPython docs by default;
any .txt / .rst / .md file, .jsonl / .jsonl.zst / .jsonl.gz file, directory of them, or glob), the
whole-document held-out rule, and the tokenizers. Token files and training windows: ``shards``.

Formats: a text file is one document; a JSON-lines file holds one document per line, its "text"
field (``text_field``), as in SlimPajama's ``chunk*/example_train_*.jsonl.zst``. Nothing is held
in memory beyond the current line: ``iter_documents`` is a generator.
"""
import contextlib
import glob
import gzip
import hashlib
import io
import json
import os
import random
import re

import numpy as np
import torch

# ----------------------------------------------------------------------------- text
PYTHON_DOCS_GLOB = "/usr/share/doc/python3.*/html/_sources"  # Debian: python3.11-doc
TEXT_EXT = (".txt", ".rst", ".md", ".text")
JSONL_EXT = (".jsonl", ".jsonl.zst", ".jsonl.gz")
DATA_EXT = TEXT_EXT + JSONL_EXT


def default_text_dir():
    """The newest /usr/share/doc/python3.X/html/_sources (symlinked aliases resolved)."""
    found = {os.path.realpath(d) for d in glob.glob(PYTHON_DOCS_GLOB) if os.path.isdir(d)}
    key = lambda d: [int(v) for v in re.findall(r"python3\.(\d+)", d)[-1:]]  # noqa: E731
    return max(found, key=key) if found else None


def list_files(path):
    """(root, files): the data files that ``path`` names, sorted. ``path``: a directory (every
    text / JSON-lines file below it, recursively), one file, or a glob pattern (``*?[``). Document
    ids are relative to ``root``, so a moved corpus keeps its held-out split."""
    if os.path.isdir(path):
        files = []
        for dp, _, fs in os.walk(path):
            files += [os.path.join(dp, f) for f in fs if f.endswith(DATA_EXT)]
        root = path
    elif os.path.isfile(path):
        files, root = [path], os.path.dirname(path)
    elif any(c in path for c in "*?["):
        files = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
        root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    else:
        raise FileNotFoundError(path)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(DATA_EXT)} files under {path}")
    return root, sorted(files)


def _open_lines(path):
    """(binary line iterator, raw file): the raw file's tell() is the compressed bytes read."""
    raw = open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raw.close()
            raise SystemExit(f"{path}: reading .zst needs: pip install zstandard") from e
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), 1 << 20)
    elif path.endswith(".gz"):
        stream = io.BufferedReader(gzip.GzipFile(fileobj=raw), 1 << 20)
    else:
        stream = raw
    return stream, raw


class DocumentStream:
    """Iterates (doc_id, text) over the files of ``path`` in sorted order, one document at a time.
    ``bytes_read`` (on-disk bytes consumed so far, compressed for .zst/.gz) drives a progress bar;
    ``total_bytes`` is the sum of the file sizes."""

    def __init__(self, path, text_field="text", max_docs=None):
        self.root, self.files = list_files(path)
        self.text_field, self.max_docs = text_field, max_docs
        self.total_bytes = sum(os.path.getsize(f) for f in self.files)
        self.bytes_read = 0

    def _rel(self, f):
        return os.path.relpath(f, self.root) if self.root else os.path.basename(f)

    def __iter__(self):
        n, done = 0, 0
        for f in self.files:
            rel = self._rel(f)
            if f.endswith(JSONL_EXT):
                stream, raw = _open_lines(f)
                with stream, raw:
                    for i, line in enumerate(stream):
                        if not line.strip():
                            continue
                        try:
                            t = json.loads(line.decode("utf-8", errors="replace")).get(self.text_field)
                        except (json.JSONDecodeError, AttributeError) as e:
                            raise ValueError(f"{f}:{i + 1}: not a JSON object ({e})") from None
                        if i % 64 == 0:
                            self.bytes_read = done + raw.tell()
                        if isinstance(t, str) and t.strip():
                            yield f"{rel}:{i}", t
                            n += 1
                            if self.max_docs and n >= self.max_docs:
                                return
            else:
                with open(f, encoding="utf-8", errors="replace") as fh:
                    t = fh.read()
                if t.strip():
                    yield rel, t
                    n += 1
                    if self.max_docs and n >= self.max_docs:
                        return
            done += os.path.getsize(f)
            self.bytes_read = done


def write_jsonl(path, texts, text_field="text", level=3):
    """Writes documents as JSON lines (``{"text": ...}``), zstd-compressed for .zst and gzipped for
    .gz, streaming; returns (documents, uncompressed bytes). Used to make fixtures and the
    benchmark corpus."""
    raw = open(path, "wb")
    if path.endswith(".zst"):
        import zstandard
        out = zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)
    elif path.endswith(".gz"):
        out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=min(level, 9))
    else:
        out = raw
    n = size = 0
    with raw:
        with out if out is not raw else contextlib.nullcontext():
            for t in texts:
                line = (json.dumps({text_field: t}, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
                out.write(line)
                n, size = n + 1, size + len(line)
    return n, size


def iter_documents(path, text_field="text", max_docs=None):
    """(doc_id, text) one at a time; see ``DocumentStream``."""
    return iter(DocumentStream(path, text_field, max_docs))


def read_documents(path, max_docs=None):
    """A list of (doc_id, text): ``iter_documents`` collected, for small corpora only (the token
    files of ``shards`` stream instead)."""
    docs = list(iter_documents(path, max_docs=max_docs))
    if not docs:
        raise FileNotFoundError(f"no text documents found under {path}")
    return docs


def is_held_out(doc_id, eval_frac, split_seed=0):
    """Whole-document held-out rule, decidable one document at a time (streaming): a document is
    held out iff a 64-bit hash of (split_seed, doc_id) falls below ``eval_frac`` of the range. The
    same document is held out whatever else the corpus holds, in whatever order it is read."""
    return held_out_score(doc_id, split_seed) < eval_frac


def held_out_score(doc_id, split_seed=0):
    """The hash of (split_seed, doc_id) as a float in [0, 1)."""
    h = hashlib.blake2b(f"{split_seed}\0{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2.0 ** 64


def split_documents(docs, eval_frac, seed=0):
    """In-memory split of a list (small corpora, benchmarks): holds out whole documents (a seeded
    shuffle of doc ids), never pieces of one."""
    order = sorted(range(len(docs)), key=lambda i: docs[i][0])
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * eval_frac)) if len(docs) > 1 else 0
    ev = set(order[:n_eval])
    return [d for i, d in enumerate(docs) if i not in ev], [d for i, d in enumerate(docs) if i in ev]


# ----------------------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as tokens (0..255), 256 = end of document. No files, no training."""
    name = "bytes"
    vocab_size = 257
    eos_token_id = 256
    identity = "bytes-utf8-v1"
    parallel = False  # bytes are a memcpy: worker processes would only add pickling

    def encode_batch(self, texts):
        return [list(t.encode("utf-8", errors="replace")) for t in texts]

    def encode_np(self, texts):
        return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8) for t in texts]


class HFTokenizer:
    """A Hugging Face tokenizer (no special tokens added; documents end in ``eos_token_id``)."""
    parallel = True

    def __init__(self, tok):
        self.tok, self.name = tok, type(tok).__name__
        tok.model_max_length = 1 << 30  # we chunk ourselves; silence the length warning
        self.eos_token_id = tok.eos_token_id
        self.vocab_size = len(tok)
        self._identity = None

    @property
    def identity(self):
        """What decides the token ids: the serialised fast tokenizer (vocabulary, merges,
        normaliser, pre-tokenizer) hashed, plus the vocabulary size and EOS id."""
        if self._identity is None:
            backend = getattr(self.tok, "backend_tokenizer", None)
            if backend is not None:
                spec = backend.to_str()
            else:  # a slow tokenizer: its vocabulary and class
                spec = json.dumps(sorted(self.tok.get_vocab().items())) + type(self.tok).__name__
            h = hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:24]
            self._identity = f"hf-{self.name}-v{self.vocab_size}-eos{self.eos_token_id}-{h}"
        return self._identity

    def encode_batch(self, texts):
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def encode_np(self, texts):
        """The same ids as ``encode_batch``; through the Rust tokenizer's ``encode_batch_fast``
        (no offsets) when there is one."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        fast = getattr(backend, "encode_batch_fast", None)
        if fast is not None:
            return [np.array(e.ids, dtype=np.uint32) for e in fast(texts, add_special_tokens=False)]
        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]

    def __getstate__(self):  # worker processes get the tokenizer, not the cached identity
        return {"tok": self.tok}

    def __setstate__(self, state):
        self.__init__(state["tok"])


def tokenize_docs(tok, docs):
    """In-memory tokenisation of a list of documents (small corpora, benchmarks): one LongTensor,
    documents separated by EOS. Large corpora: ``shards.prepare_token_files``."""
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
