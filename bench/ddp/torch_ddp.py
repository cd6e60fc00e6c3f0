"""bench/ddp/torch_ddp.py — the Fashion-MNIST CNN recipe of bench/ddp/run.sh in PyTorch's
DistributedDataParallel: N processes (torch.multiprocessing), the gloo backend on the CPU
(nccl with --device cuda, one GPU per process), one thread each unless told, the global
batch split evenly, each epoch's order Kiln's (kn_epoch_order, so both sides see the same
batches) padded and sharded as torch's DistributedSampler does, Adam lr 1e-3, default
bucket size. Rank 0 prints one JSON line: {"impl": "pytorch-ddp", "processes", "steps",
"train_seconds", "samples_per_second" (global), "test_loss", "test_accuracy"}. Training
time excludes data loading and evaluation, as Kiln's does.

usage: python3 bench/ddp/torch_ddp.py [--processes N] [--threads N] [--epochs N]
           [--max-steps N] [--batch N] [--device cpu|cuda] [--data DIR]
"""
import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fmnist"))
from torch_fmnist import DATA, evaluate, kiln_epoch_order, load, model_for  # noqa: E402


def shard(order, rank, world):
    """DistributedSampler: the order padded from its start to a multiple of world, rank r
    taking positions r, r + world, ..."""
    total = (len(order) + world - 1) // world * world
    padded = torch.cat([order, order[:total - len(order)]])
    return padded[rank:total:world]


def clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run(rank, args, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.processes)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.manual_seed(args.seed)
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "t10k")
    x_train, y_train = x_train.to(device), y_train.to(device)
    model = DistributedDataParallel(model_for("cnn").to(device),
                                    device_ids=[rank] if cuda else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    local = args.batch // args.processes
    steps, samples, seconds = 0, 0, 0.0
    for epoch in range(args.epochs):
        if args.max_steps and steps >= args.max_steps:
            break
        model.train()
        order = shard(kiln_epoch_order(len(x_train), args.seed, epoch), rank,
                      args.processes).to(device)
        dist.barrier()
        start = clock(device)
        for i in range(0, len(order), local):
            if args.max_steps and steps >= args.max_steps:
                break
            idx = order[i:i + local]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            steps += 1
            samples += len(idx)
        dist.barrier()
        seconds += clock(device) - start
    total = torch.tensor([float(samples)], device=device)
    dist.all_reduce(total)
    if rank == 0:
        test_loss, test_accuracy = evaluate(model.module, x_test.to(device), y_test.to(device))
        print(json.dumps({"impl": "pytorch-ddp", "processes": args.processes,
                          "backend": dist.get_backend(), "threads": args.threads,
                          "batch": args.batch, "steps": steps, "train_seconds": seconds,
                          "samples_per_second": total.item() / seconds,
                          "test_loss": test_loss, "test_accuracy": test_accuracy}), flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    if args.batch % args.processes:
        raise SystemExit(f"--batch {args.batch} does not divide by --processes {args.processes}")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(args, port), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
