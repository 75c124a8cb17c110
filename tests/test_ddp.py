"""DistributedDataParallel over fastrnn modules: 2 CPU processes (gloo) must produce the gradients
of a single process on the concatenated batch."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastrnn

WORLD = 2
PER_RANK = 3


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
        self.gru = fastrnn.GRU(6, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x, lengths):
        y, _ = self.lstm(x, lengths=lengths)
        y, h = self.gru(y, lengths=lengths)
        return self.head(y).square().mean(dim=(1, 2)) + h[0].sum(dim=1)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * PER_RANK, 7, 4, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 8, (WORLD * PER_RANK,), generator=g)
    return x, lengths


def _model():
    torch.manual_seed(0)
    return Model().double()


def _worker(rank, port, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        x, lengths = _data()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        model(x[part], lengths[part]).mean().backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, os.path.join(out_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()
    # torch 2.14 aborts ("terminate called without an active exception") in about one exit in
    # five of a gloo process that ran a DDP backward, after all its work is done, with
    # nn.Linear alone as well. Skip the interpreter's teardown once everything is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp_grads = torch.load(tmp_path / "grads.pt")

    model = _model()
    x, lengths = _data()
    model(x, lengths).mean().backward()  # the mean over the full batch = the average of rank means
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert ddp_grads.keys() == grads.keys()
    for n in grads:
        assert grads[n] is not None and grads[n].abs().sum() > 0, n
        torch.testing.assert_close(ddp_grads[n], grads[n], rtol=1e-9, atol=1e-12, msg=n)
