# The image that deploy/kuberay/rayservice.yaml runs on its head and GPU workers:
#   docker build -t ghcr.io/example/moe-budget-controller:0.1.0 .
# Ray's own GPU image of the Ray version pyproject.toml pins (and the RayService's rayVersion says), with
# Python 3.12 as on the GPU runs of docs/h100/env.txt; tests/deploy/test_image.py keeps the four in step.
FROM rayproject/ray:2.60.0-py312-gpu

LABEL org.opencontainers.image.ref.name="ghcr.io/example/moe-budget-controller:0.1.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.title="moe-budget-controller" \
      org.opencontainers.image.description="Latency-budget controller for MoE VLMs on Ray Serve"

# Object-store table stores need their fsspec driver too: --build-arg STORE_DRIVERS="s3fs" (or gcsfs).
ARG STORE_DRIVERS=""

# serving.app reads configs/ (and the demo's sample_results/) beside its package, so the source tree
# stays in the image and the project is installed editable from it. The base image runs as `ray`.
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users controller controller
COPY --chown=ray:users moe moe
COPY --chown=ray:users serving serving
COPY --chown=ray:users lookupctl lookupctl
COPY --chown=ray:users configs configs
COPY --chown=ray:users deploy deploy
COPY --chown=ray:users sample_results sample_results
# serve: the app (ray[serve] is already there at the pinned version, so pip keeps it); torch: the model
# replicas of configs/serving_h100.yaml (pip's default torch wheel is the CUDA build); store: fsspec.
RUN pip install --no-cache-dir -e '.[serve,torch,store]' ${STORE_DRIVERS} \
    && python -c "import ray, serving.app, moe.engine, lookupctl; assert ray.__version__ == '2.60.0', ray.__version__" \
    && python -m serving.haproxy_binary /home/ray/haproxy-nosplice
# HAProxy without splice(): the RayService's RAY_SERVE_HAPROXY_BINARY_PATH names this script, which
# execs the HAProxy that ray[serve] ships with -dS. With splice, that HAProxy can miss a streaming
# client that leaves, and the model decodes on for it (serving/haproxy_binary.py).
