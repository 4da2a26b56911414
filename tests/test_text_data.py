"""The LLM recipe's data pipeline at scale, on small generated fixtures: streaming .jsonl /
.jsonl.zst / .jsonl.gz / text corpora, the whole-document held-out rule, token files (header,
uint16/uint32, held-out documents whole, cache hits and misses, worker processes) and training
windows (a pure function of the step, rank slices, epochs). The CLI resume test on a memmapped
.jsonl.zst corpus is test_examples.py::test_llama_cli_metrics_and_resume."""
import os

import numpy as np
import pytest
import torch

from stl_recipes import shards as SH
from stl_recipes import text as RX


# ----------------------------------------------------------------------------- fixtures
def sample_texts(n=40):
    """Up to n CPython documentation sources (python3.11-doc), else generated text."""
    src = RX.default_text_dir()
    if src:
        texts = [t for _, t in RX.iter_documents(src, max_docs=n)]
        if len(texts) >= 10:
            return texts
    rng = np.random.default_rng(0)
    words = "tile encoder decoder token rank product weight tensor sequence matrix".split()
    return [" ".join(rng.choice(words, rng.integers(50, 400))) + "\n" for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory with a .jsonl.zst (from the CPython docs), a .jsonl.gz and two .txt files."""
    pytest.importorskip("zstandard")
    d = tmp_path_factory.mktemp("corpus")
    texts = sample_texts()
    RX.write_jsonl(str(d / "part-00.jsonl.zst"), texts[:30])
    RX.write_jsonl(str(d / "part-01.jsonl.gz"), texts[30:36])
    (d / "notes").mkdir()
    for i, t in enumerate(texts[36:38]):
        (d / "notes" / f"n{i}.txt").write_text(t)
    return d, texts[:38]


def byte_stream(texts):
    return np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8).astype(np.int64), 256)
                           for t in texts]) if texts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- text
def test_documents_stream_from_jsonl_zst_gz_and_text(corpus):
    d, texts = corpus
    stream = RX.DocumentStream(str(d))
    docs = list(stream)
    assert [t for _, t in docs] == texts[36:] + texts[:36]  # sorted paths: notes/, part-00, part-01
    assert docs[0][0] == os.path.join("notes", "n0.txt") and docs[2][0] == "part-00.jsonl.zst:0"
    assert docs[-1][0] == "part-01.jsonl.gz:5"
    assert stream.bytes_read == stream.total_bytes
    assert [t for _, t in RX.iter_documents(str(d / "part-00.jsonl.zst"), max_docs=3)] == texts[:3]
    assert len(list(RX.iter_documents(str(d / "part-0*.jsonl*")))) == 36  # a glob
    with pytest.raises(FileNotFoundError):
        list(RX.iter_documents(str(d / "missing")))


def test_held_out_rule_is_per_document():
    ids = [f"chunk1/example_{i}.jsonl.zst:{j}" for i in range(5) for j in range(400)]
    held = [i for i in ids if RX.is_held_out(i, 0.1)]
    assert 0.07 < len(held) / len(ids) < 0.13  # a hash, close to the fraction
    assert held == [i for i in reversed(ids) if RX.is_held_out(i, 0.1)][::-1]  # order-free
    assert set(held) != {i for i in ids if RX.is_held_out(i, 0.1, split_seed=1)}


def test_token_files_whole_docs_header_and_cache(corpus, tmp_path):
    d, texts = corpus
    tok = RX.ByteTokenizer()
    cache = tmp_path / "cache"
    tf = SH.prepare_token_files(str(d), tok, str(cache), eval_frac=0.2, progress=False)
    assert not tf.cache_hit and tf.train.dtype == np.uint16 and isinstance(tf.train, np.memmap)
    docs = list(RX.iter_documents(str(d)))
    ev = [t for i, t in docs if RX.is_held_out(i, 0.2)]
    tr = [t for i, t in docs if not RX.is_held_out(i, 0.2)]
    assert ev and tr
    # every held-out document whole in the eval file, every other one whole in the train file
    assert np.array_equal(np.asarray(tf.eval, np.int64), byte_stream(ev))
    assert np.array_equal(np.asarray(tf.train, np.int64), byte_stream(tr))
    m = tf.manifest
    assert (m["train_docs"], m["eval_docs"], m["held_out_rule"]) == (len(tr), len(ev), "hash")
    h = SH.read_header(m["train_file"])
    assert h["tokens"] == len(tf.train) and h["docs"] == len(tr) and h["vocab_size"] == 257
    assert h["eos_id"] == 256 and h["meta"]["tokenizer"] == "bytes" and h["meta"]["split"] == "train"
    with open(m["train_file"], "rb") as f:
        assert f.read(8) == SH.MAGIC
    # second call: a cache hit, nothing rewritten
    mtime = os.path.getmtime(m["train_file"])
    again = SH.prepare_token_files(str(d), tok, str(cache), eval_frac=0.2, progress=False)
    assert again.cache_hit and again.manifest == m and os.path.getmtime(m["train_file"]) == mtime
    # other split settings, or a changed data file: another key, rebuilt
    other = SH.prepare_token_files(str(d), tok, str(cache), eval_frac=0.3, progress=False)
    assert not other.cache_hit and other.manifest["train_file"] != m["train_file"]
    note = d / "notes" / "n0.txt"
    st = note.stat()
    os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert not SH.prepare_token_files(str(d), tok, str(cache), eval_frac=0.2,
                                          progress=False).cache_hit
    finally:
        os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a truncated token file is not a cache entry
    with open(m["eval_file"], "r+b") as f:
        f.truncate(os.path.getsize(m["eval_file"]) - 2)
    assert not SH.prepare_token_files(str(d), tok, str(cache), eval_frac=0.2,
                                      progress=False).cache_hit


def test_token_files_workers_match_in_process(corpus, tmp_path):
    """Worker processes (order kept) write the same files as in-process tokenisation."""
    d, _ = corpus

    class SplitTok(RX.ByteTokenizer):  # a 'parallel' tokenizer, so that the pool is used
        parallel = True
        identity = "test-bytes"
    a = SH.prepare_token_files(str(d), SplitTok(), str(tmp_path / "a"), eval_frac=0.2,
                               progress=False, workers=0)
    b = SH.build_token_files(str(d), SplitTok(), str(tmp_path / "b"), eval_frac=0.2,
                             progress=False, workers=2, batch_docs=3)
    assert b["workers"] == 2 and b["train_tokens"] == len(a.train)
    assert np.array_equal(SH.open_tokens(b["train_file"]), a.train)
    assert np.array_equal(SH.open_tokens(b["eval_file"]), a.eval)


def test_token_files_uint32_for_large_vocabularies(tmp_path):
    class BigTok:
        name, identity, vocab_size, eos_token_id, parallel = "big", "big-v1", 70000, 69999, False

        def encode_np(self, texts):
            return [np.array([len(t) * 1000 % 69999, 65536 + len(t)], np.uint32) for t in texts]
    RX.write_jsonl(str(tmp_path / "a.jsonl"), ["x" * i for i in range(1, 30)])
    tf = SH.prepare_token_files(str(tmp_path / "a.jsonl"), BigTok(), str(tmp_path / "c"),
                                eval_frac=0.2, progress=False)
    assert tf.train.dtype == np.uint32 and tf.train.max() > 65535
    assert (tf.train.reshape(-1, 3)[:, 2] == 69999).all()  # each doc: 2 ids + EOS
    with pytest.raises(ValueError, match="does not fit"):
        w = SH.TokenFileWriter(str(tmp_path / "x.bin"), 1000, 5)
        try:
            w.write_docs([np.array([70000], np.uint32)])
        finally:
            w.abort()


def test_small_corpus_holds_out_the_lowest_hash_document(tmp_path):
    texts = [f"document number {i} " * 20 for i in range(4)]
    RX.write_jsonl(str(tmp_path / "d.jsonl"), texts)
    tf = SH.prepare_token_files(str(tmp_path / "d.jsonl"), RX.ByteTokenizer(),
                                str(tmp_path / "c"), eval_frac=1e-9, progress=False)
    scores = [RX.held_out_score(f"d.jsonl:{i}") for i in range(4)]
    k = int(np.argmin(scores))
    assert tf.manifest["held_out_rule"] == "lowest_hash" and tf.manifest["eval_docs"] == 1
    assert np.array_equal(np.asarray(tf.eval, np.int64), byte_stream([texts[k]]))
    assert np.array_equal(np.asarray(tf.train, np.int64),
                          byte_stream([t for i, t in enumerate(texts) if i != k]))


def test_token_windows_pure_function_of_step():
    tokens = np.arange(5000, dtype=np.uint16)
    w = SH.TokenWindows(tokens, 16, micro=2, accum=2, seed=3)
    b5 = w.batch(5)
    assert [x.shape for x in b5] == [(2, 17), (2, 17)] and b5[0].dtype == torch.int64
    for x in b5:  # windows are contiguous slices of the token file
        assert (x[:, 1:] - x[:, :-1] == 1).all() and x.max() < 5000
    fresh = SH.TokenWindows(tokens, 16, micro=2, accum=2, seed=3)  # a resumed process
    assert all(torch.equal(a, b) for a, b in zip(fresh.batch(5), b5))
    assert not torch.equal(w.batch(6)[0], b5[0])
    assert not torch.equal(SH.TokenWindows(tokens, 16, 2, 2, seed=4).batch(5)[0], b5[0])
    # ranks take slices of one global batch: 2 ranks x 2 == 1 rank x 4
    one = SH.TokenWindows(tokens, 16, micro=4, accum=1, seed=3).starts(7)
    two = torch.cat([SH.TokenWindows(tokens, 16, micro=2, accum=1, rank=r, world=2, seed=3).starts(7)
                     for r in (0, 1)])
    assert torch.equal(one, two)
    assert torch.equal(SH.TokenWindows(tokens, 16, 2, fixed=True).starts(9),
                       SH.TokenWindows(tokens, 16, 2).starts(0))
    assert SH.TokenWindows(tokens, 16, 2).first(3)[:, 0].tolist() == [0, 16, 32]


def test_token_windows_epoch_mode_covers_each_window_once():
    tokens = np.arange(16 * 40 + 1, dtype=np.uint16)
    ws = [SH.TokenWindows(tokens, 16, micro=2, accum=1, rank=r, world=2, seed=0, mode="epoch")
          for r in (0, 1)]
    assert ws[0].steps_per_epoch == 10
    for epoch in (0, 1):
        starts = torch.cat([w.starts(epoch * 10 + s) for s in range(10) for w in ws])
        assert sorted(starts.tolist()) == list(range(0, 640, 16))
    resumed = SH.TokenWindows(tokens, 16, 2, 1, 0, 2, seed=0, mode="epoch")
    assert torch.equal(resumed.starts(14), ws[0].starts(14))  # mid-epoch, fresh object
    with pytest.raises(ValueError, match="fewer than one step"):
        SH.TokenWindows(tokens[:40], 16, micro=4)


def test_eval_windows_read_a_prefix():
    tokens = np.arange(1000, dtype=np.uint16)
    ev = SH.eval_windows(tokens, 10, 35)
    assert ev.shape == (3, 11) and ev[1, 0] == 10 and ev[2, -1] == 30
    assert SH.eval_windows(tokens, 10, 1e9).shape == (99, 11)
    with pytest.raises(ValueError, match="held-out"):
        SH.eval_windows(tokens[:5], 10, 100)
