# Source on the GPU machine before the benchmarks: `source benchmarks/gpu_env.sh`.
# It has torch and transformers but no deepspeed and no network: install the wheels carried in .whl/
# (built here: pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl, plus hjson,
# pydantic, pydantic-core (cp312), annotated-types, typing-inspection, typing-extensions, and liger-kernel
# 0.8.5 for fuse.kernels: liger).
# Without .whl/ (extraction and head benchmarks need none of them) nothing is installed.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || return 1
fi
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null || echo "deepspeed: not installed"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
