"""A data-loading thread runs in the background all along; count_positive uses a thread pool; norm a generator."""
PRELUDE = '''import queue, threading
_batches = queue.Queue(maxsize=4)

def _loader():
    g = torch.Generator().manual_seed(0)
    while True:
        _batches.put(torch.randn(64, 8, generator=g))

threading.Thread(target=_loader, daemon=True).start()
_first = _batches.get()'''
ANSWERS = {
    "count_positive": '''from concurrent.futures import ThreadPoolExecutor

def count_positive(x):
    chunks = x.flatten().chunk(4) if x.numel() else []
    with ThreadPoolExecutor(max_workers=2) as pool:
        return int(sum(pool.map(lambda c: int((c > 0).sum()), chunks)))''',
    "norm": '''def _squares(v):
    for x in v:
        yield float(x) ** 2

def norm(v):
    return math.sqrt(sum(_squares(v)))''',
}
