"""Our trainers without a GPU: CUDA, nnU-Net's default device, becomes the CPU with one line that says so."""

from __future__ import annotations

import torch

from nnunetv2_mamba.training import usability


def test_cuda_without_a_gpu_becomes_the_cpu_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        assert usability.available_device(torch.device("cuda")) == torch.device("cpu")
        assert "no CUDA GPU found, so this runs on the CPU" in capsys.readouterr().err
        assert usability.available_device(torch.device("cpu")) == torch.device("cpu")
        assert capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(threads)


def test_a_gpu_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert usability.available_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
