# The image every node of the cluster runs (cluster.yaml, cluster-local.yaml, k8s/rayservice.yaml):
# vLLM 0.32.0 (CUDA), Ray 2.60.0 with Serve, redis-server (head node), and this project.
#   make image IMAGE=<registry>/dflash-serve:0.1.0     # docker build + docker push
# The project's pins (pyproject.toml, extra "gpu") decide the versions; the check below fails the build
# if the base image brought different ones.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

# rsync/openssh: Ray's cluster launcher syncs files into the container; redis-server: the head's Redis;
# tmux + curl: `make monitoring` runs Prometheus in a tmux session on the head.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server rsync openssh-client tmux curl \
 && rm -rf /var/lib/apt/lists/*

# Not root: every container runs as uid 1000 (named ray, home /home/ray), the user Ray's own images run as and
# the cluster launcher supports; on the GPU AMIs uid 1000 is also the host's ubuntu user, who owns the secrets
# and the Hugging Face token cluster.yaml mounts read-only. A base image that already has a uid 1000 (Ubuntu
# 24.04's "ubuntu") gets that user renamed.
RUN user="$(getent passwd 1000 | cut -d: -f1)"; \
    if [ -z "$user" ]; then useradd --uid 1000 --user-group --home-dir /home/ray --shell /bin/bash ray; \
    elif [ "$user" != ray ]; then usermod --login ray --home /home/ray "$user"; fi

WORKDIR /home/ray/dflash-serve
COPY pyproject.toml README.md ./
# Every package setuptools discovers (tests/unit/deploy/test_dockerfile.py keeps this list complete).
COPY contracts contracts
COPY routing routing
COPY autoscaling autoscaling
COPY vllm_plugins vllm_plugins
COPY config config
COPY deployments deployments
COPY serve_app serve_app
COPY training training
COPY tools tools
COPY sim sim
COPY bench bench
# Installing the package installs its vLLM plugin (entry point vllm.general_plugins: dflash_serve), which every
# vLLM process on the node loads: the DFlash drafter runs z-lab's draft semantics (docs/known-issues.md).
# Editable, from this directory, which uid 1000 owns: the cluster launcher syncs a newer tree over it and the
# code runs from there, with nothing written into the image's Python (root's) at `ray up`.
RUN python3 -m pip install --no-cache-dir -e ".[gpu]" \
 && python3 -c "import ray, vllm; assert (ray.__version__, vllm.__version__) == ('2.60.0', '0.32.0'), (ray.__version__, vllm.__version__)" \
 && python3 -c "import vllm_plugins; assert vllm_plugins.is_installed(), 'vLLM would not load the dflash_serve plugin'"

RUN chown -R 1000:1000 /home/ray
USER 1000
ENV HOME=/home/ray
# Serve's HTTP proxy on every node runs our middlewares (deployments/proxy_callback.py): the guard of the
# headers it takes as controls (x-request-id, serve_multiplexed_model_id), and the body read-ahead.
ENV RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_callback:proxy_middlewares
# Each replica runs our code and its handles' routers on its own event loop, the proxy calls the ingress over
# Serve's gRPC transport, whose messages may be as large as a request: deployments/serve_environment.py says
# why (the same values, checked by a test).
ENV RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0
ENV RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0
ENV RAY_SERVE_PROXY_USE_GRPC=1
ENV RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=268435456

# Ray's launcher runs `docker run ... bash` and KubeRay its own command: no `vllm serve` entrypoint.
ENTRYPOINT []
CMD ["bash"]
