"""Dockerfile, .dockerignore, apptainer.def and the shell wrappers, checked without building images.

What these cannot check (no Docker, Apptainer or GPU here): that the images build, that the base
image's torch sees CUDA, and ``--nv``. docs/CLUSTER.md gives the one command that checks those on a
cluster (``apptainer test``, which runs the def file's %test).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from tests.containers.conftest import require_module, require_tool

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DEF_FILE = REPO / "apptainer.def"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
        current = ""
    return out


def instructions(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint")
    cpu_base = REPO / "tests" / "containers" / "cpu-base.Containerfile"  # build_image.sh's CPU base
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE), str(cpu_base)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_image_is_a_pinned_cuda_pytorch() -> None:
    """FROM takes BASE_IMAGE (build_image.sh passes a CPU base); its default is what users get."""
    (from_,) = instructions("FROM")
    assert from_ == "${BASE_IMAGE}", from_
    defaults = [a.partition("=")[2] for a in instructions("ARG") if a.startswith("BASE_IMAGE=")]
    assert len(defaults) == 1, "one default for BASE_IMAGE, declared before FROM"
    (base,) = defaults
    image, _, tag = base.partition(":")
    assert image == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), f"not an exact tag: {base}"


def test_package_is_installed_with_the_readme_command_only() -> None:
    runs = " && ".join(instructions("RUN"))
    installs = re.findall(r"pip install [^&]*", runs)
    assert len(installs) == 1, f"one pip install, of the package itself: {installs}"
    assert re.fullmatch(r"pip install -c \S+ \.\s*", installs[0]), installs[0]
    assert "pip install -c constraints-cpu.txt -e ." in (REPO / "README.md").read_text()


def test_runs_as_non_root_with_entrypoint_and_work_volume() -> None:
    (user,) = instructions("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["python", "-m", "mi_pipeline"]
    assert json.loads(instructions("VOLUME")[-1]) == ["/work"]
    assert instructions("WORKDIR")[-1] == "/work"
    assert not any(re.search(r"(^|\s)/run(/|\s|\"|$)", args) for _, args in dockerfile_instructions()), \
        "/run is the system runtime directory (read-only under Apptainer): not the run root"


def test_labels_carry_version_and_source() -> None:
    text = " ".join(instructions("LABEL"))
    assert 'org.opencontainers.image.version="${MI_PIPELINE_VERSION}"' in text
    assert "org.opencontainers.image.source=" in text
    assert f"MI_PIPELINE_VERSION={VERSION}" in instructions("ARG"), "image version must match pyproject.toml"


def test_entrypoint_maps_docker_run_arguments_to_the_cli() -> None:
    """`docker run IMAGE submit --mode resume` == `python -m mi_pipeline submit --mode resume`."""
    entry = json.loads(instructions("ENTRYPOINT")[-1])
    argv = [sys.executable if a == "python" else a for a in entry] + ["submit", "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--mode" in result.stdout, result.stderr


# --------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules: patterns relative to the context root; a match on a folder
# excludes everything below it; "**" spans folders; the last matching pattern wins; "!" re-includes)
# --------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def in_build_context(relpath: str, rules=None) -> bool:
    rules = dockerignore_rules() if rules is None else rules
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def build_context_files() -> list[str]:
    rules = dockerignore_rules()
    files = []
    for path in REPO.rglob("*"):
        if path.is_file():
            rel = path.relative_to(REPO).as_posix()
            if in_build_context(rel, rules):
                files.append(rel)
    return files


def test_dockerignore_keeps_run_outputs_out_and_the_package_in() -> None:
    for rel in ("runs/demo/checkpoints/motion/last.pth", "data/cache/s1.npz", "logs/motion/train.log",
                "checkpoints/motion/best_model.pth", ".training_progress", ".training_progress.lock",
                "runs/x/.training_progress", ".git/HEAD", "mi_pipeline/__pycache__/x.pyc", "mi_pipeline.sif",
                "mi_pipeline.egg-info/PKG-INFO"):
        assert not in_build_context(rel), f"{rel} would be sent to the Docker build"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [f for f in tracked if f.startswith(("mi_pipeline/", "configs/", "slurm/"))]
    needed += ["pyproject.toml", "README.md", "constraints-cpu.txt", "mi_pipeline/data/prepare.py"]
    assert "mi_pipeline/data/prepare.py" in needed
    missing = [f for f in needed if not in_build_context(f)]
    assert not missing, f"left out of the image by .dockerignore: {missing}"


# --------------------------------------------------------------------------------------------
# apptainer.def
# --------------------------------------------------------------------------------------------

KNOWN_SECTIONS = {"labels", "environment", "runscript", "test", "help", "post", "files", "setup",
                  "startscript", "arguments"}


def def_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None and line.strip():
            sections[current].append(line.strip())
    return sections


def def_header(text: str) -> dict[str, str]:
    header = {}
    for line in text.split("\n%", 1)[0].splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip().lower()] = value.strip()
    return header


def parse_with_spython(path: Path):
    require_module("spython")
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(path)).recipe["spython-base"]


def test_def_file_parses_and_has_every_section() -> None:
    recipe = parse_with_spython(DEF_FILE)
    text = DEF_FILE.read_text()
    header = def_header(text)
    assert header == {"bootstrap": "docker-daemon", "from": f"mi_pipeline:{VERSION}"}, header
    assert recipe.fromHeader == f"mi_pipeline:{VERSION}"
    assert recipe.cmd == 'exec python -m mi_pipeline "$@"'
    assert f"org.opencontainers.image.version {VERSION}" in recipe.labels
    assert "PYTHONNOUSERSITE=1" in recipe.environ
    sections = def_sections(text)
    assert set(sections) <= KNOWN_SECTIONS, set(sections) - KNOWN_SECTIONS
    for name in ("labels", "environment", "runscript", "test", "help"):
        assert sections.get(name), f"%{name} missing or empty"
    assert any("python -m mi_pipeline" in line for line in sections["test"])
    assert any("--bind" in line or "-B " in line for line in sections["help"])


def test_documented_registry_and_archive_variants_work(tmp_path: Path) -> None:
    """Run the def file's own sed recipes (b) and (c) and parse what they produce."""
    lines, commands, current = DEF_FILE.read_text().splitlines(), [], ""
    for line in lines:
        body = line[1:].strip() if line.startswith("#") else ""
        if body.startswith("sed ") or current:
            current += body.rstrip("\\").strip() + " "
            if not body.endswith("\\"):
                commands.append(current.strip())
                current = ""
    assert len(commands) == 2, commands
    expected = {"docker": "registry/mi_pipeline:" + VERSION, "docker-archive": f"mi_pipeline-{VERSION}.tar"}
    shutil.copy(DEF_FILE, tmp_path / "apptainer.def")
    for command in commands:
        command = command.replace("REGISTRY", "registry")
        subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
        out_name = shlex.split(command)[-1]
        header = def_header((tmp_path / out_name).read_text())
        assert expected[header["bootstrap"]] == header["from"], header
        recipe = parse_with_spython(tmp_path / out_name)
        assert recipe.cmd == 'exec python -m mi_pipeline "$@"'
        expected.pop(header["bootstrap"])
    assert not expected


# --------------------------------------------------------------------------------------------
# Shell scripts
# --------------------------------------------------------------------------------------------


def shell_scripts() -> list[Path]:
    found = set(REPO.glob("slurm/*")) | set(REPO.glob("tests/**/*.sh")) | {REPO / ".ci" / "run"}
    scripts = []
    for path in sorted(found):
        if path.is_file():
            first = path.read_text(errors="replace").split("\n", 1)[0]
            if path.suffix in (".sh", ".sbatch") or re.match(r"#!.*\b(ba)?sh\b", first):
                scripts.append(path)
    return scripts


def test_shellcheck_passes_on_every_shell_script() -> None:
    shellcheck = require_tool("shellcheck")
    scripts = shell_scripts()
    assert {"run_stage.sbatch", "submit_chain.sh", "submit_resume.sbatch", "cluster.sh"} <= {p.name for p in scripts}
    result = subprocess.run([shellcheck, "--external-sources", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrappers_are_executable_and_ask_for_requeue_and_the_signal() -> None:
    for name in ("run_stage.sbatch", "submit_chain.sh", "submit_resume.sbatch"):
        assert os.access(REPO / "slurm" / name, os.X_OK), f"slurm/{name} is not executable"
    stage = (REPO / "slurm" / "run_stage.sbatch").read_text()
    assert "#SBATCH --requeue" in stage and re.search(r"#SBATCH --signal=B:USR2@\d+", stage)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in stage
    chain = (REPO / "slurm" / "submit_chain.sh").read_text()
    assert "--parsable" in chain and "--kill-on-invalid-dep=yes" in chain and "afterok:" in chain
    resume = (REPO / "slurm" / "submit_resume.sbatch").read_text()
    assert "-m mi_pipeline.submit --mode resume --executor slurm" in resume


# --------------------------------------------------------------------------------------------
# The Dockerfile's install steps, for real, in a fresh virtual environment
# --------------------------------------------------------------------------------------------


@pytest.mark.venv
@pytest.mark.slow
def test_dockerfile_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """COPY the build context (.dockerignore applied), run the Dockerfile's `pip install -c X .` with
    the README's CPU constraint file as X, then the entry point: what `docker build` would do, minus CUDA."""
    context = tmp_path / "context"
    for rel in build_context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    runs = " && ".join(instructions("RUN"))
    (install,) = re.findall(r"pip install -c \S+ \.", runs)
    argv = shlex.split(install)
    argv[argv.index("-c") + 1] = "constraints-cpu.txt"

    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    result = subprocess.run([str(python), "-m", *argv], cwd=context, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installed = time.monotonic() - started

    # The entry point, from outside the source tree so only the installed package can answer.
    for args in (["--help"], ["submit", "--help"], ["train", "--help"]):
        result = subprocess.run([str(python), "-m", "mi_pipeline", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "usage" in (result.stdout + result.stderr)
    where = subprocess.run([str(python), "-c", "import mi_pipeline; print(mi_pipeline.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, where
    print(f"fresh venv + Dockerfile install: {installed:.0f}s")
