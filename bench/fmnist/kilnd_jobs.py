"""bench/fmnist/kilnd_jobs.py — bench/fmnist/run.sh's --jobs mode: the Fashion-MNIST job
trained through kilnd, once alone and then N at once on N workers, in one kilnd started
for the run (a temporary data directory, KN_NUM_THREADS = --threads, 127.0.0.1 on a free
port, --threads-per-worker 0: the jobs computing at the time share the cores equally).

For each job it reads the job record (the trainer's samples/s, which leaves out its
callbacks: metric writes, checkpoints, evaluation) and the loss series, whose per-step
wall times give the rate with the callbacks in (from the first logged step to the last;
the test-set evaluation after the last step stays out). Prints one JSON line per phase:
  {"impl": "kilnd", "phase": "alone"|"together", "jobs": N, "samples_per_second": ...
   (wall, callbacks included), "trainer_samples_per_second": ..., "per_job": [...]}
"together"'s samples_per_second counts the steps all jobs made while every one of them
was training (from the last job's first step to the first job's last step) over that
time: what the machine did while they shared it.

With --kiln PATH --rounds R the job alone runs R times, each right after `kiln train`
on the same job file (printed as {"impl": "kiln", "phase": "train", "round": r, ...}), so
the two are compared at the same moment R times over instead of once, minutes apart:
this VM's speed drifts by 20% over an evening, and one pair can land on either side of it.

usage: kilnd_jobs.py --kilnd PATH --job FILE --jobs N --threads T --data DIR --out DIR
                     [--kiln PATH --rounds R]
(FILE: a kiln train job; its "data" is replaced by the uploaded dataset, the rest kept).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def call(url, method="GET", body=None, data=None):
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            text = r.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"kilnd_jobs: {method} {url}: {e.code} {e.read()[:300]!r}")
    return json.loads(text) if text else None


def start_kilnd(kilnd, workers, threads, work):
    log = open(os.path.join(work, "kilnd.log"), "w")
    env = dict(os.environ, KN_NUM_THREADS=str(threads))
    proc = subprocess.Popen([kilnd, "--listen", "127.0.0.1", "--port", "0", "--data-dir",
                             os.path.join(work, "data"), "--workers", str(workers),
                             "--threads-per-worker", "0", "--log-level", "info"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        m = re.search(r"listening on (http://[0-9.]+:[0-9]+)",
                      open(os.path.join(work, "kilnd.log")).read())
        if m:
            try:
                call(m.group(1) + "/v2/health/live")
                return proc, m.group(1)
            except (OSError, SystemExit):
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("kilnd_jobs: kilnd did not start:\n" +
                     open(os.path.join(work, "kilnd.log")).read()[-2000:])


def upload(url, data_dir):
    call(url + "/v1/datasets", "POST", {"name": "fmnist"})
    for name, file in (("train_images", "train-images-idx3-ubyte.gz"),
                       ("train_labels", "train-labels-idx1-ubyte.gz"),
                       ("test_images", "t10k-images-idx3-ubyte.gz"),
                       ("test_labels", "t10k-labels-idx1-ubyte.gz")):
        with open(os.path.join(data_dir, file), "rb") as f:
            call(f"{url}/v1/datasets/fmnist/files/{name}?format=idx", "PUT", data=f.read())


def kilnd_job(job_file, seed):
    job = json.load(open(job_file))
    data = {"dataset": "fmnist"}
    for key in ("scale", "normalize"):
        if key in job["data"]:
            data[key] = job["data"][key]
    job["data"] = data
    job["seed"] = seed
    return job


def wait(url, ids):
    done = {}
    while len(done) < len(ids):
        for i in ids:
            if i in done:
                continue
            j = call(f"{url}/v1/jobs/{i}")
            if j["state"] in ("succeeded", "failed", "canceled"):
                if j["state"] != "succeeded":
                    raise SystemExit(f"kilnd_jobs: job {i} {j['state']}: {j.get('error')}")
                done[i] = j
        time.sleep(0.2)
    return [done[i] for i in ids]


def loss_times(url, job_id):
    """[(step, wall_time)] of the job's loss series."""
    series = call(f"{url}/v1/jobs/{job_id}/metrics?names=loss")["series"]["loss"]
    return [(p[0], p[1]) for p in series]


def run_phase(url, job_file, count, batch, phase):
    ids = [call(url + "/v1/jobs", "POST", kilnd_job(job_file, seed))["id"]
           for seed in range(count)]
    jobs = wait(url, ids)
    per_job, series = [], []
    for j in jobs:
        times = loss_times(url, j["id"])
        series.append(times)
        (s0, t0), (s1, t1) = times[0], times[-1]
        per_job.append({"id": j["id"], "steps": j["progress"]["step"],
                        "samples_per_second": (s1 - s0) * batch / (t1 - t0) if t1 > t0 else None,
                        "trainer_samples_per_second": j["samples_per_second"],
                        "test_accuracy": j["metrics"].get("test_accuracy")})
    # while all of them ran: from the last first step to the first last step
    start = max(t[0][1] for t in series)
    end = min(t[-1][1] for t in series)
    steps = sum(sum(1 for _, w in t if start < w <= end) for t in series)
    overlap = steps * batch / (end - start) if end > start else None
    return {"impl": "kilnd", "phase": phase, "jobs": count,
            "samples_per_second": overlap if count > 1 else per_job[0]["samples_per_second"],
            "overlap_seconds": end - start,
            "trainer_samples_per_second": sum(p["trainer_samples_per_second"] for p in per_job),
            "per_job": per_job}


def kiln_train(kiln, job_file, threads):
    """`kiln train` on the job file: its summary line's samples/s (the trainer's figure,
    which is also what run.sh's single `kiln train` row reports)."""
    out = subprocess.run([kiln, "train", job_file, "--json", "--quiet", "--threads",
                          str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kilnd_jobs: kiln train {job_file} failed: {out.stderr[-1000:]}")
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.strip().startswith("{")]
    summary = [r for r in rows if r.get("event") == "summary"][-1]
    return {"impl": "kiln", "phase": "train", "samples_per_second": summary["samples_per_second"],
            "train_seconds": summary["train_seconds"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kilnd", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kiln", help="alternate `kiln train` with the job alone")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("kilnd_jobs: --rounds must be at least 1")
    batch = json.load(open(args.job)).get("batch_size", 64)
    work = tempfile.mkdtemp(prefix="kiln-bench-jobs-")
    proc = None
    try:
        proc, url = start_kilnd(args.kilnd, args.jobs, args.threads, work)
        upload(url, args.data)
        for r in range(args.rounds):
            if args.kiln:
                print(f"bench/fmnist: round {r + 1}/{args.rounds}: kiln train ...",
                      file=sys.stderr)
                print(json.dumps(dict(kiln_train(args.kiln, args.job, args.threads), round=r)),
                      flush=True)
            print(f"bench/fmnist: round {r + 1}/{args.rounds}: kilnd, the job alone ...",
                  file=sys.stderr)
            print(json.dumps(dict(run_phase(url, args.job, 1, batch, "alone"), round=r)),
                  flush=True)
        print(f"bench/fmnist: kilnd, {args.jobs} jobs at once ...", file=sys.stderr)
        print(json.dumps(run_phase(url, args.job, args.jobs, batch, "together")), flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.copy(os.path.join(work, "kilnd.log"), os.path.join(args.out, "fmnist-kilnd.log"))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
