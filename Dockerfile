# One image for every stapipe container: the dashboard (gunicorn), the Celery workers (queues
# "gpu" and "cpu") and the one-shot migration. compose.yaml picks the role with `command:`.
#
# Why no nvidia/cuda base image: torch 2.14.1 from PyPI is the CUDA 13.0 build and depends on the
# CUDA runtime, cuBLAS, cuDNN, NCCL, … as pip wheels (the nvidia-* pins in constraints.txt), so the
# whole user-space CUDA stack arrives with `pip install`. The only thing missing is the driver
# (libcuda.so), which must match the host's kernel module anyway: the NVIDIA Container Toolkit
# mounts it into the container when compose reserves a GPU. The host needs a driver that supports
# CUDA 13.0 (R580 or newer). Without a GPU the same image runs on the CPU.

# Stage 1: only the dependency list out of pyproject.toml. The install below copies this file, not
# pyproject.toml, so an edit of anything else in pyproject.toml (version, pytest or ruff settings)
# leaves the multi-GB dependency layer cached.
FROM python:3.11-slim-bookworm AS requirements
COPY pyproject.toml /tmp/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /requirements.txt

FROM python:3.11-slim-bookworm

# Debian's ffmpeg/ffprobe for extraction (SPEC §2: decoding goes through ffmpeg-python, which
# calls the ffmpeg binary); tini as PID 1 so SIGTERM from `docker stop` reaches Celery's warm
# shutdown and the zombies of killed stage processes are reaped.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A virtual environment owned by root: the non-root runtime user can import but never modify it.
RUN python -m venv /opt/venv

WORKDIR /opt/stapipe

# Dependencies first, as their own layer: the list from stage 1, pinned by constraints.txt. This
# multi-GB layer (torch + CUDA wheels) is rebuilt only when the dependency list or constraints.txt
# change, not on a code edit (bench/RESULTS.md, "Image": seconds instead of minutes).
COPY --from=requirements /requirements.txt /tmp/requirements.txt
COPY constraints.txt ./
RUN pip install -c constraints.txt -r /tmp/requirements.txt

# Then the code. The dependencies are already satisfied (--no-deps: a code edit never touches the
# dependency layer above, and this layer takes seconds), so this only builds and installs stapipe.
COPY . .
RUN pip install --no-deps -c constraints.txt . && rm -rf build *.egg-info

# Non-root user. The data folders exist in the image, owned by that user, so that a fresh named
# volume mounted on them starts with that ownership (Docker copies it into an empty volume).
# Bind mounts and NFS exports must be writable by uid 1000 themselves.
RUN groupadd --gid 1000 stapipe \
    && useradd --uid 1000 --gid stapipe --create-home --shell /usr/sbin/nologin stapipe \
    && mkdir -p /srv/stapipe/var /srv/stapipe/data /srv/stapipe/artefacts /srv/stapipe/logs \
                /srv/stapipe/weights /srv/stapipe/torch \
    && chown -R stapipe:stapipe /srv/stapipe

# Defaults matching compose.yaml (which sets them again, in one documented place: x-stapipe-env).
# TORCH_HOME is torchvision's weight cache: <TORCH_HOME>/hub/checkpoints/<file>.pth.
# NVIDIA_DRIVER_CAPABILITIES: "compute" is what CUDA needs, "utility" gives nvidia-smi.
ENV STAPIPE_HOME=/srv/stapipe/var \
    STAPIPE_DATA_ROOT=/srv/stapipe/data \
    STAPIPE_ARTEFACT_ROOT=/srv/stapipe/artefacts \
    STAPIPE_LOG_ROOT=/srv/stapipe/logs \
    STAPIPE_WEIGHTS_DIR=/srv/stapipe/weights \
    TORCH_HOME=/srv/stapipe/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER stapipe
WORKDIR /srv/stapipe
EXPOSE 8000

ENTRYPOINT ["/usr/bin/tini", "--"]
# The dashboard by default; compose.yaml overrides the command for the workers and migrations.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "dashboard.wsgi:app"]
