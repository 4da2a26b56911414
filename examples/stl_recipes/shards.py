"""Token files for the LLM recipe: a corpus is tokenised once, streaming, into two memory-mapped
token files (training documents, held-out documents), cached, and read back as training windows.

File format (in the spirit of llm.c / nanoGPT's .bin shards, not byte-compatible with them): a
4096-byte header, then the tokens as little-endian uint16 (vocabulary <= 65536) or uint32, every
document followed by the tokenizer's EOS id. The header:

    offset  0  8 bytes   magic b"STLTOKS\\0"
            8  uint32    format version (1)
           12  uint32    bytes per token (2 or 4)
           16  uint64    token count
           24  uint64    document count
           32  uint64    vocabulary size
           40  int64     EOS id
           48  uint32    length of the JSON metadata that follows (tokenizer name and identity,
                         split, source); the rest of the 4096 bytes is zero

The cache (``prepare_token_files``) keys both files by the data files (absolute path, size, mtime),
the tokenizer's identity, the held-out settings and ``max_docs``: ``KEY.train.bin``,
``KEY.eval.bin`` and ``KEY.json`` (the manifest, written last: a cache entry exists once it does).
A lock file serialises builders, so DDP ranks and concurrent runs tokenise once.

Training windows (``TokenWindows``) are read from the memory map at offsets that are a pure
function of (seed, step): a resumed run reads the same windows, and memory stays O(batch).
"""
import contextlib
import hashlib
import json
import os
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .text import DocumentStream, held_out_score

__all__ = ["MAGIC", "FORMAT_VERSION", "HEADER_BYTES", "TokenFileWriter", "read_header",
           "open_tokens", "prepare_token_files", "TokenFiles", "TokenWindows", "eval_windows",
           "default_cache_dir", "cache_key"]

MAGIC = b"STLTOKS\0"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
_HEAD = struct.Struct("<8sIIQQQqI")  # magic, version, itemsize, tokens, docs, vocab, eos, meta len


def token_dtype(vocab_size):
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ----------------------------------------------------------------------------- the file
class TokenFileWriter:
    """Appends documents to ``path`` (through a temp file, renamed by ``finish``)."""

    def __init__(self, path, vocab_size, eos_id):
        self.path, self.vocab_size, self.eos_id = path, int(vocab_size), int(eos_id)
        self.dtype = token_dtype(vocab_size)
        self.limit = np.iinfo(self.dtype).max
        if self.eos_id > self.limit:
            raise ValueError(f"EOS id {eos_id} does not fit {self.dtype}")
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_BYTES)
        self.n_tokens = self.n_docs = 0

    def write_docs(self, arrays):
        """Writes each array of ids followed by EOS. Returns the token offset of each document."""
        if not arrays:
            return []
        eos = np.array([self.eos_id], dtype=self.dtype)
        parts, offsets, pos = [], [], self.n_tokens
        for a in arrays:
            if a.size and a.dtype.itemsize > self.dtype.itemsize and int(a.max()) > self.limit:
                raise ValueError(f"token id {int(a.max())} does not fit {self.dtype} "
                                 f"(vocabulary size {self.vocab_size})")
            parts += [a.astype(self.dtype, copy=False), eos]
            offsets.append(pos)
            pos += a.size + 1
        self.f.write(np.concatenate(parts).tobytes())
        self.n_docs += len(arrays)
        self.n_tokens = pos
        return offsets

    def finish(self, meta):
        meta_b = json.dumps(meta, sort_keys=True, default=str).encode()
        if _HEAD.size + len(meta_b) > HEADER_BYTES:
            raise ValueError(f"token file metadata too long ({len(meta_b)} bytes)")
        self.f.seek(0)
        self.f.write(_HEAD.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, self.n_tokens,
                                self.n_docs, self.vocab_size, self.eos_id, len(meta_b)) + meta_b)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self):
        with contextlib.suppress(OSError):
            self.f.close()
            os.unlink(self.tmp)


def read_header(path):
    """The header of a token file as a dict (checks magic, version and file size)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < _HEAD.size:
        raise ValueError(f"{path}: not a token file (too short)")
    magic, ver, itemsize, n, docs, vocab, eos, mlen = _HEAD.unpack_from(head)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a token file (magic {magic!r})")
    if ver != FORMAT_VERSION or itemsize not in (2, 4):
        raise ValueError(f"{path}: unsupported token file (version {ver}, {itemsize} bytes/token)")
    size = os.path.getsize(path)
    if size != HEADER_BYTES + n * itemsize:
        raise ValueError(f"{path}: {size} bytes, header says {HEADER_BYTES + n * itemsize} "
                         f"(truncated or still being written)")
    meta = json.loads(head[_HEAD.size:_HEAD.size + mlen].decode()) if mlen else {}
    return {"version": ver, "dtype": np.dtype("<u2" if itemsize == 2 else "<u4"), "tokens": n,
            "docs": docs, "vocab_size": vocab, "eos_id": eos, "meta": meta}


def open_tokens(path):
    """Read-only memory map of a token file's tokens (1-D numpy array, uint16 or uint32)."""
    h = read_header(path)
    if h["tokens"] == 0:
        return np.empty(0, dtype=h["dtype"])
    return np.memmap(path, dtype=h["dtype"], mode="r", offset=HEADER_BYTES, shape=(h["tokens"],))


def _move_span(src_tmp, itemsize, off, length, n_tokens):
    """Removes tokens [off, off+length) from the temp file ``src_tmp`` (header first), returning
    them: used once, when a small corpus's hash rule held out no document."""
    with open(src_tmp, "r+b") as f:
        f.seek(HEADER_BYTES + off * itemsize)
        span = f.read(length * itemsize)
        rd, wr, chunk = off + length, off, 1 << 22
        while rd < n_tokens:
            f.seek(HEADER_BYTES + rd * itemsize)
            buf = f.read(min(chunk, n_tokens - rd) * itemsize)
            f.seek(HEADER_BYTES + wr * itemsize)
            f.write(buf)
            rd += len(buf) // itemsize
            wr += len(buf) // itemsize
        f.truncate(HEADER_BYTES + (n_tokens - length) * itemsize)
    return span


# ----------------------------------------------------------------------------- building
def default_cache_dir():
    """$STL_TORCH_CACHE/tokens, else $XDG_CACHE_HOME (or ~/.cache)/stl-torch/tokens."""
    if os.environ.get("STL_TORCH_CACHE"):
        return os.path.join(os.environ["STL_TORCH_CACHE"], "tokens")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stl-torch", "tokens")


def cache_key(stream, tok, eval_frac, split_seed, max_docs, text_field):
    files = []
    for f in stream.files:
        st = os.stat(f)
        files.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    spec = {"format": FORMAT_VERSION, "files": files, "tokenizer": tok.identity,
            "eval_frac": float(eval_frac), "split_seed": int(split_seed), "max_docs": max_docs,
            "text_field": text_field}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class TokenFiles:
    train: np.ndarray          # memmap of the training documents' tokens
    eval: np.ndarray           # memmap of the held-out documents' tokens
    manifest: dict = field(default_factory=dict)
    cache_hit: bool = False
    seconds: float = 0.0       # this call: build, or cache look-up and open

    @property
    def paths(self):
        return self.manifest["train_file"], self.manifest["eval_file"]


_WORKER_TOK = None


def _worker_init(tok):
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOK = tok


def _worker_encode(texts):
    return _WORKER_TOK.encode_np(texts)


@contextlib.contextmanager
def _env(key, value):
    old = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _batches(stream, eval_frac, split_seed, batch_bytes, batch_docs):
    """Groups documents into (texts, scores) batches of about ``batch_bytes`` characters."""
    texts, scores, size = [], [], 0
    for doc_id, t in stream:
        texts.append(t)
        scores.append(held_out_score(doc_id, split_seed))
        size += len(t)
        if size >= batch_bytes or len(texts) >= batch_docs:
            yield texts, scores
            texts, scores, size = [], [], 0
    if texts:
        yield texts, scores


def build_token_files(source, tok, out_prefix, *, eval_frac, split_seed=0, max_docs=None,
                      text_field="text", workers=0, threads=True, progress=True,
                      batch_bytes=4 << 20, batch_docs=4096):
    """Streams ``source`` once: tokenises each document and appends it, with EOS, to
    ``out_prefix.train.bin`` or (held out by ``is_held_out``) ``out_prefix.eval.bin``. Returns the
    manifest dict (also written to ``out_prefix.json``, last).

    ``workers``: 0 tokenises in this process (with ``threads``, a Hugging Face fast tokenizer
    encodes each batch on all cores: TOKENIZERS_PARALLELISM=true for the build); N > 0 uses N
    single-threaded worker processes, batches kept in order. Memory: a few batches
    of text and their ids, never the corpus. When the hash rule holds out no document (a corpus of
    a handful of documents) the document with the lowest hash is held out instead, so that a
    corpus of two or more documents always has a held-out set."""
    t0 = time.time()
    stream = DocumentStream(source, text_field, max_docs)
    base = {"tokenizer": tok.name, "tokenizer_identity": tok.identity, "source": os.path.abspath(source),
            "eval_frac": eval_frac, "split_seed": split_seed, "max_docs": max_docs,
            "text_field": text_field}
    train = TokenFileWriter(out_prefix + ".train.bin", tok.vocab_size, tok.eos_token_id)
    held = TokenFileWriter(out_prefix + ".eval.bin", tok.vocab_size, tok.eos_token_id)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=stream.total_bytes, unit="B", unit_scale=True, dynamic_ncols=True,
                   mininterval=1.0, desc=f"tokenize ({tok.name})", file=sys.stderr)
    pool = None
    if workers and workers > 0 and getattr(tok, "parallel", True):
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers, _worker_init, (tok,))
    min_train = (2.0, 0, 0)  # (score, token offset, length incl. EOS) of the lowest-hash train doc
    text_bytes = 0

    def emit(texts, scores, arrays):
        nonlocal min_train, text_bytes
        tr = [(a, s) for a, s in zip(arrays, scores) if s >= eval_frac]
        ev = [a for a, s in zip(arrays, scores) if s < eval_frac]
        offs = train.write_docs([a for a, _ in tr])
        for (a, s), o in zip(tr, offs):
            if s < min_train[0]:
                min_train = (s, o, a.size + 1)
        held.write_docs(ev)
        text_bytes += sum(len(t) for t in texts)
        if bar is not None:
            bar.update(stream.bytes_read - bar.n)
            bar.set_postfix(tokens=f"{train.n_tokens + held.n_tokens:,}", refresh=False)

    # in-process: let a Rust tokenizer use its threads (TOKENIZERS_PARALLELISM=false elsewhere)
    par = "true" if pool is None and threads and getattr(tok, "parallel", False) else None
    try:
        with _env("TOKENIZERS_PARALLELISM", par):
            pending = deque()
            for texts, scores in _batches(stream, eval_frac, split_seed, batch_bytes, batch_docs):
                if pool is None:
                    emit(texts, scores, tok.encode_np(texts))
                    continue
                pending.append((texts, scores, pool.apply_async(_worker_encode, (texts,))))
                while len(pending) > 2 * workers:  # bounded: never more than 2 batches a worker
                    t, s, r = pending.popleft()
                    emit(t, s, r.get())
            while pending:
                t, s, r = pending.popleft()
                emit(t, s, r.get())
        rule = "hash"
        if held.n_docs == 0 and train.n_docs >= 2 and eval_frac > 0:
            rule = "lowest_hash"
            train.f.flush()
            _, off, length = min_train
            span = _move_span(train.tmp, train.dtype.itemsize, off, length, train.n_tokens)
            train.f.seek(0, os.SEEK_END)  # the file shrank under the writer: continue at its end
            train.n_tokens -= length
            train.n_docs -= 1
            arr = np.frombuffer(span, dtype=train.dtype)
            held.write_docs([arr[:-1]])  # write_docs appends the EOS again
        if train.n_docs == 0:
            raise ValueError(f"{source}: no training documents (eval_frac {eval_frac})")
        secs = time.time() - t0
        meta = dict(base, held_out_rule=rule, build_seconds=round(secs, 2), text_bytes=text_bytes)
        train.finish(dict(meta, split="train"))
        held.finish(dict(meta, split="eval"))
    except BaseException:
        train.abort()
        held.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    total = train.n_tokens + held.n_tokens
    manifest = dict(base, held_out_rule=rule, format_version=FORMAT_VERSION,
                    dtype=str(train.dtype), vocab_size=tok.vocab_size, eos_id=tok.eos_token_id,
                    files=len(stream.files), input_bytes=stream.total_bytes, text_bytes=text_bytes,
                    train_file=train.path, eval_file=held.path,
                    train_tokens=train.n_tokens, eval_tokens=held.n_tokens,
                    train_docs=train.n_docs, eval_docs=held.n_docs,
                    build_seconds=round(secs, 2), tokens_per_s=round(total / max(secs, 1e-9)),
                    workers=workers, threads=bool(par), created=time.strftime("%Y-%m-%d %H:%M:%S"))
    tmp = f"{out_prefix}.json.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, out_prefix + ".json")
    return manifest


def _load_manifest(prefix):
    try:
        with open(prefix + ".json") as f:
            m = json.load(f)
        for split in ("train", "eval"):  # both files whole, as the manifest says
            h = read_header(m[f"{split}_file"])
            if h["tokens"] != m[f"{split}_tokens"]:
                return None
        return m
    except (OSError, ValueError, KeyError):
        return None


def prepare_token_files(source, tok, cache_dir=None, *, eval_frac=0.05, split_seed=0,
                        max_docs=None, text_field="text", workers=0, threads=True, progress=True,
                        log=None):
    """The token files of ``source`` under ``tok``: from the cache when an entry with the same key
    exists, else built (``build_token_files``) under a lock, so that concurrent callers (DDP ranks,
    two runs) build once and the others wait and reuse it. Returns ``TokenFiles`` (memmaps)."""
    t0 = time.time()
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    stream = DocumentStream(source, text_field, max_docs)
    key = cache_key(stream, tok, eval_frac, split_seed, max_docs, text_field)
    prefix = os.path.join(cache_dir, key)
    m, hit = _load_manifest(prefix), True
    if m is None:
        import fcntl
        with open(prefix + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another builder of this key: wait for it
            try:
                m = _load_manifest(prefix)
                if m is None:
                    hit = False
                    if log:
                        log(f"tokenizing {source} ({len(stream.files)} files, "
                            f"{stream.total_bytes / 1e6:.1f} MB) into {prefix}.{{train,eval}}.bin")
                    m = build_token_files(source, tok, prefix, eval_frac=eval_frac,
                                          split_seed=split_seed, max_docs=max_docs,
                                          text_field=text_field, workers=workers,
                                          threads=threads, progress=progress)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    out = TokenFiles(open_tokens(m["train_file"]), open_tokens(m["eval_file"]), m, hit,
                     time.time() - t0)
    if log:
        log(f"token files {'(cached) ' if hit else ''}{prefix}: {m['train_tokens']:,} training "
            f"tokens ({m['train_docs']:,} docs), {m['eval_tokens']:,} held-out tokens "
            f"({m['eval_docs']:,} whole docs), {m['dtype']}, ready in {out.seconds:.1f}s")
    return out


# ----------------------------------------------------------------------------- windows
def _mix(*vals):
    h = hashlib.blake2b(repr(vals).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def eval_windows(tokens, seq_len, max_tokens):
    """(n, seq_len + 1) held-out windows with stride seq_len from the start of ``tokens``, as many
    as ``max_tokens`` covers (at least one); reads only that prefix of the memmap."""
    avail = (len(tokens) - 1) // seq_len
    if avail < 1:
        raise ValueError(f"only {len(tokens)} held-out tokens: fewer than one sequence of "
                         f"{seq_len} (raise --eval-frac or lower --seq-len)")
    n = min(avail, max(1, int(max_tokens) // seq_len))
    ids = torch.from_numpy(np.asarray(tokens[: n * seq_len + 1], dtype=np.int64))
    return ids.unfold(0, seq_len + 1, seq_len)


class TokenWindows:
    """Training batches of (seq_len + 1)-token windows read from a token memmap.

    ``mode="random"`` (nanoGPT's sampling): each step draws the global batch's window starts
    uniformly from [0, tokens - seq_len - 1] with a generator seeded by (seed, step); rank r takes
    its slice. ``mode="epoch"``: non-overlapping windows with stride seq_len, shuffled once per
    epoch by (seed, epoch), each seen once per epoch (8 bytes of permutation per window). Either
    way the batch of a step is a pure function of (seed, step, rank, world, batch sizes): resuming
    at step k reads exactly the windows an unbroken run reads. ``fixed``: step 0's batch always."""

    def __init__(self, tokens, seq_len, micro, accum=1, rank=0, world=1, seed=0, mode="random",
                 fixed=False):
        if mode not in ("random", "epoch"):
            raise ValueError(f"mode {mode!r}: 'random' or 'epoch'")
        self.tokens, self.L, self.micro, self.accum = tokens, int(seq_len), int(micro), int(accum)
        self.rank, self.world, self.seed, self.mode, self.fixed = rank, world, seed, mode, fixed
        self.n = len(tokens)
        self.per_rank = self.micro * self.accum
        self.global_batch = self.per_rank * world
        if self.n < self.L + 1:
            raise ValueError(f"only {self.n} training tokens: fewer than one sequence of {seq_len}")
        self.n_windows = (self.n - 1) // self.L  # non-overlapping
        self.steps_per_epoch = self.n_windows // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.n_windows} training sequences of {seq_len}: fewer than one "
                             f"step of {self.global_batch}")
        self._perm_epoch, self._perm = None, None

    def starts(self, step):
        """This rank's window start offsets at ``step`` (LongTensor of micro * accum)."""
        s = 0 if self.fixed else int(step)
        if self.mode == "random":
            g = torch.Generator().manual_seed(_mix("windows", self.seed, s))
            off = torch.randint(0, self.n - self.L, (self.global_batch,), generator=g)
        else:
            epoch, k = divmod(s, self.steps_per_epoch)
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(_mix("epoch", self.seed, epoch))
                self._perm, self._perm_epoch = torch.randperm(self.n_windows, generator=g), epoch
            off = self._perm[k * self.global_batch:(k + 1) * self.global_batch] * self.L
        return off[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def read(self, starts):
        rows = [np.asarray(self.tokens[o:o + self.L + 1]) for o in starts.tolist()]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def batch(self, step):
        """``accum`` LongTensors (micro, seq_len + 1) for this rank at ``step``."""
        return list(self.read(self.starts(step)).split(self.micro))

    def first(self, n):
        """The first ``n`` non-overlapping windows (calibration sequences), (n, seq_len + 1)."""
        n = min(n, self.n_windows)
        return self.read(torch.arange(n) * self.L)
