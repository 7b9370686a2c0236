"""What Nextflow submits to LSF, for executors that cannot be installed here.

LSF cannot run on this machine, so these tests put stand-in `bsub`, `bjobs`
and `bkill` commands first on PATH: `bsub` keeps the job script that
Nextflow's own LSF executor pipes to it (the task's .command.run, with its
`#BSUB` header), starts it in the background and answers like LSF
(`Job <N> is submitted to queue <Q>.`); `bjobs -w` reports RUN or DONE from
the task's exit file. Everything else is Nextflow's real LsfExecutor: the
header, memory units read from $LSF_ENVDIR/lsf.conf, per-job or per-process
memory, the queue and the GPU request of -profile gpu. The runs are stub runs
(-stub-run): what is tested is what is submitted, not pystitch.

AWS Batch needs the nf-amazon plugin, which Nextflow downloads at run time:
offline, the run stops before any task with Nextflow's message about the plugin.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nf_support import SEGMENTERS, nextflow, ok, step, trace_rows  # noqa: F401

pytestmark = [pytest.mark.nextflow, pytest.mark.slow]

BSUB = r"""#!/bin/bash
# stand-in for LSF's bsub: Nextflow pipes the job script on stdin
set -eu
state="${LSF_STANDIN_STATE:?}"
script="$(cat)"
id=$(( $(cat "$state/next" 2>/dev/null || echo 1000) + 1 ))
echo "$id" > "$state/next"
echo "$id $PWD" >> "$state/jobs"
printf '%s\n' "$script" > .command.bsub
queue="$(sed -n 's/^#BSUB -q //p' .command.bsub | head -n 1)"
nohup setsid bash .command.bsub > .command.log 2>&1 < /dev/null &
echo "Job <$id> is submitted to queue <${queue:-normal}>."
"""

BJOBS = r"""#!/bin/bash
# stand-in for LSF's bjobs -w: RUN until the task's exit file exists, then DONE
state="${LSF_STANDIN_STATE:?}"
echo "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME"
[ -f "$state/jobs" ] || exit 0
while read -r id dir; do
    if [ -s "$dir/.exitcode" ]; then stat=DONE; else stat=RUN; fi
    echo "$id root $stat normal host host job Jan 1 00:00"
done < "$state/jobs"
"""


@pytest.fixture
def lsf(tmp_path) -> dict[str, str]:
    """The environment of a run that 'submits to LSF': stand-ins first on PATH."""
    bin_dir, state = tmp_path / "lsf-bin", tmp_path / "lsf-state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("bsub", BSUB), ("bjobs", BJOBS), ("bkill", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"bin": str(bin_dir), "state": str(state)}


def run_lsf(nextflow, tmp_path: Path, lsf: dict, *args, lsf_conf: str | None = None) -> list[dict]:
    launch = tmp_path / "launch"
    config = tmp_path / "site.config"
    # a site config: a queue, and room for 2 cores (the test profile allows 1)
    config.write_text("process.queue = 'short'\nprocess.resourceLimits = [ cpus: 2, memory: 2.GB, time: 1.h ]\n"
                      "trace.fields = 'name,status,exit,native_id,workdir,cpus,memory'\n")
    env = {"PATH": f"{lsf['bin']}:{nextflow.env['PATH']}", "LSF_STANDIN_STATE": lsf["state"]}
    if lsf_conf is not None:
        envdir = tmp_path / "lsf-conf"
        envdir.mkdir()
        (envdir / "lsf.conf").write_text(lsf_conf)
        env["LSF_ENVDIR"] = str(envdir)
    ok(nextflow(launch, "-profile", "lsf,gpu,test", "-c", config, "-stub-run", "--outdir", tmp_path / "results",
                "-with-trace", launch / "trace.txt", *args, env=env))
    rows = trace_rows(launch / "trace.txt")
    assert rows and {r["status"] for r in rows} == {"COMPLETED"}
    jobs = Path(lsf["state"], "jobs").read_text().split("\n")
    assert len([j for j in jobs if j]) == len(rows), "every task went through bsub"
    for row in rows:
        assert row["native_id"].isdigit(), row
    return rows


def header(row: dict) -> list[str]:
    """The #BSUB lines of a task's job script, as bsub received it."""
    text = (Path(row["workdir"]) / ".command.bsub").read_text()
    assert text == (Path(row["workdir"]) / ".command.run").read_text()
    return re.findall(r"^#BSUB (.*)$", text, re.M)


def test_lsf_headers_default_units_per_process_memory_no_gpu_for_threshold(nextflow, tmp_path, lsf):
    """Without lsf.conf Nextflow writes memory limits in KB (LSF's default unit) and
    divides -M by the cores (LSF's default per-process limit); the threshold
    backend gets no GPU even under -profile gpu."""
    rows = run_lsf(nextflow, tmp_path, lsf)
    for row in rows:
        lines = header(row)
        assert "-q short" in lines and not any(line.startswith("-gpu") for line in lines), (row["name"], lines)
    segment = next(r for r in rows if step(r) == "SEGMENT_BLOCK")
    lines = header(segment)
    # the plan's estimate of the stub (256 MB, 10 min, 1 core): -M and select[] in KB,
    # rusage[] in MB (LSF's default units of each)
    assert "-M 262144" in lines and "-W 00:10" in lines, lines
    assert '-R "select[mem>=262144] rusage[mem=256]"' in lines, lines
    plan = next(r for r in rows if step(r) == "PLAN_BLOCKS")
    lines = header(plan)
    # 2 cores, 2 GB: -M is per process, 1 GB each
    assert "-n 2" in lines and '-R "span[hosts=1]"' in lines and "-M 1048576" in lines, lines


def test_lsf_headers_site_units_per_job_memory_and_gpu(nextflow, tmp_path, lsf):
    """A site whose lsf.conf sets LSF_UNIT_FOR_LIMITS=MB and LSB_JOB_MEMLIMIT=Y:
    memory in MB and per job. A backend that can use a GPU gets `-gpu num=1`
    on its segmentation jobs, and only there."""
    rows = run_lsf(nextflow, tmp_path, lsf, "--backend", "callable", "--function", f"{SEGMENTERS}:identity",
                   lsf_conf="LSF_UNIT_FOR_LIMITS=MB\nLSB_JOB_MEMLIMIT=Y\n")
    for row in rows:
        lines = header(row)
        assert ("-gpu num=1" in lines) == (step(row) == "SEGMENT_BLOCK"), (row["name"], lines)
    segment = next(r for r in rows if step(r) == "SEGMENT_BLOCK")
    assert "-M 256" in header(segment)
    plan = next(r for r in rows if step(r) == "PLAN_BLOCKS")
    assert "-n 2" in header(plan) and "-M 2048" in header(plan), header(plan)


def test_awsbatch_offline_stops_before_any_task_naming_the_plugin(nextflow, tmp_path):
    launch = tmp_path / "launch"
    res = nextflow(launch, "-profile", "awsbatch,test", "--outdir", tmp_path / "results", "-w", "s3://bucket/work",
                   "-with-trace", launch / "trace.txt", timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "nf-amazon" in out or "s3" in out.lower(), out[-3000:]
    assert trace_rows(launch / "trace.txt") == []
