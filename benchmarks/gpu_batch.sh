# The device runs behind docs/benchmarks.md's issue-15/16 tables, in the batches they were sent in
# (2 x H200; one GPU by CUDA_VISIBLE_DEVICES where a table says one GPU). Writes logs and JSON to $OUT.
#   bash benchmarks/gpu_batch.sh one   # 7B extraction steps (GPU 0) beside the 1.5B fusion steps (GPU 1), then 7B fusion
#   bash benchmarks/gpu_batch.sh one-b # 7B fusion (GPU 0) beside fuse.compile / liger (GPU 1), then 2-GPU extraction, old warm-up
#   bash benchmarks/gpu_batch.sh two   # 2-GPU extraction scaling on 8,192 rows, ZeRO-2 scaling
#   bash benchmarks/gpu_batch.sh three # fusion at micro-batch 8, 7B extraction over 1,024 rows, 2-GPU extraction at 512
#   bash benchmarks/gpu_batch.sh four  # fusion at micro-batch 16, a profile of 7B extraction, 7B fusion under ZeRO-3
#   bash benchmarks/gpu_batch.sh five  # extract.overlap against the synchronous loop, 7B
#   bash benchmarks/gpu_batch.sh six   # extract.onepass (issue 28): GPU tests, head kernels alone, 7B extraction; one GPU, no wheels
set -u
source benchmarks/gpu_env.sh || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
case "$1" in
one)
    (CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 7b --seqs 384 \
        --variants naive,ours,ours+compile,ours+compile@32768,ours+compile@65536 \
        --json "$OUT/extract7b.jsonl" >"$OUT/extract7b.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=1 python3 benchmarks/fuse.py --size 1.5b --accum 4 --steps 4 --warmup 2 \
        --variants sft,sft-same,fusion,sft+nockpt,sft-same+autockpt+fusedadam,fusion+autockpt+fusedadam,sft-same+autockpt+fusedadam+compile \
        --json "$OUT/fuse15.jsonl" >"$OUT/fuse15.log" 2>&1) &
    wait
    tail -n 14 "$OUT/extract7b.log"; tail -n 16 "$OUT/fuse15.log"
    ;;
one-b)  # after the first batch filled the disk with the Trainer's final checkpoints (now not written)
    (CUDA_VISIBLE_DEVICES=0 timeout 240 python3 benchmarks/fuse.py --size 7b --micro 1 --accum 4 --steps 3 --warmup 2 \
        --loss-chunk 1024 --variants fusion+fusedadam --json "$OUT/fuse7b.jsonl" >"$OUT/fuse7b.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=1 python3 benchmarks/fuse.py --size 1.5b --accum 4 --steps 4 --warmup 2 \
        --variants sft,fusion+autockpt+fusedadam+compile,sft-same+autockpt+fusedadam+liger,fusion+autockpt+fusedadam+liger,sft-same+autockpt+fusedadam+liger+compile,fusion+autockpt+fusedadam+liger+compile \
        --json "$OUT/fuse15b.jsonl" >"$OUT/fuse15b.log" 2>&1
     CUDA_VISIBLE_DEVICES=1 python3 -m pytest -q -p no:cacheprovider tests/fuse/test_kernels.py >"$OUT/kernels.log" 2>&1) &
    wait
    torchrun --nproc_per_node 2 benchmarks/extract.py --sizes 1.5b --variants ours+compile --seqs 1024 \
        --shard-size 256 --cold-ranks --json "$OUT/dp_cold.jsonl" >"$OUT/dp_cold.log" 2>&1
    tail -n 5 "$OUT/fuse7b.log" "$OUT/dp_cold.log"; tail -n 9 "$OUT/fuse15b.log"; tail -n 3 "$OUT/kernels.log"
    grep -h per_rank "$OUT/dp_cold.jsonl" | cut -c1-400
    ;;
two)
    export BENCH_KEEP=1
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 1.5b --variants ours+compile --seqs 8192 \
        --json "$OUT/dp.jsonl" >"$OUT/dp1.log" 2>&1
    torchrun --nproc_per_node 2 benchmarks/extract.py --sizes 1.5b --variants ours+compile --seqs 8192 \
        --json "$OUT/dp.jsonl" >"$OUT/dp2.log" 2>&1
    n=0; bad=0
    for f in /tmp/bench-1.5b-ours+compile-w1/*.safetensors; do
        n=$((n + 1)); cmp -s "$f" "/tmp/bench-1.5b-ours+compile-w2/$(basename "$f")" || bad=$((bad + 1))
    done
    echo "shards compared: $n, differing: $bad" | tee "$OUT/dp_cmp.txt"
    rm -rf /tmp/bench-1.5b-*
    torchrun --nproc_per_node 1 benchmarks/fuse.py --size 1.5b --zero 2 --micro 4 --accum 2 --steps 4 --warmup 2 \
        --variants fusion+autockpt+fusedadam --json "$OUT/zero.jsonl" >"$OUT/zero1.log" 2>&1
    torchrun --nproc_per_node 2 benchmarks/fuse.py --size 1.5b --zero 2 --micro 4 --accum 1 --steps 4 --warmup 2 \
        --variants fusion+autockpt+fusedadam --json "$OUT/zero.jsonl" >"$OUT/zero2.log" 2>&1
    tail -n 4 "$OUT/dp1.log" "$OUT/dp2.log" "$OUT/zero1.log" "$OUT/zero2.log"
    grep -h per_rank "$OUT/dp.jsonl" | python3 -c "import sys, json; [print(json.loads(l)['world'], json.loads(l)['per_rank']) for l in sys.stdin]"
    ;;
three)  # micro-batch 8 with fuse.compile (GPU 1) beside 7B extraction over realistic sorting windows (GPU 0); then
        # 2-GPU extraction with 16 windows of 512 rows (8 per rank) instead of 8 of 1,024
    (CUDA_VISIBLE_DEVICES=1 python3 benchmarks/fuse.py --size 1.5b --micro 8 --accum 2 --steps 4 --warmup 2 \
        --variants sft,sft-same+autockpt+fusedadam+compile,fusion+autockpt+fusedadam+compile \
        --json "$OUT/fuse15c.jsonl" >"$OUT/fuse15c.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 7b --seqs 1024 \
        --variants ours+compile,ours+compile@32768 --json "$OUT/extract7c.jsonl" >"$OUT/extract7c.log" 2>&1) &
    wait
    export BENCH_KEEP=1
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 1.5b --variants ours+compile --seqs 8192 \
        --shard-size 512 --json "$OUT/dp512.jsonl" >"$OUT/dp512_1.log" 2>&1
    torchrun --nproc_per_node 2 benchmarks/extract.py --sizes 1.5b --variants ours+compile --seqs 8192 \
        --shard-size 512 --json "$OUT/dp512.jsonl" >"$OUT/dp512_2.log" 2>&1
    n=0; bad=0
    for f in /tmp/bench-1.5b-ours+compile-w1/*.safetensors; do
        n=$((n + 1)); cmp -s "$f" "/tmp/bench-1.5b-ours+compile-w2/$(basename "$f")" || bad=$((bad + 1))
    done
    echo "shards compared: $n, differing: $bad" | tee "$OUT/dp512_cmp.txt"
    tail -n 6 "$OUT/fuse15c.log" "$OUT/extract7c.log" "$OUT/dp512_1.log" "$OUT/dp512_2.log"
    ;;
four)  # micro-batch 16 (GPU 1) beside a profile of 7B extraction (GPU 0); then 7B fusion under ZeRO-3 on 2 GPUs
    (CUDA_VISIBLE_DEVICES=1 python3 benchmarks/fuse.py --size 1.5b --micro 16 --accum 1 --steps 4 --warmup 2 \
        --variants sft,sft-same+autockpt+fusedadam+compile,fusion+autockpt+fusedadam+compile \
        --json "$OUT/fuse15d.jsonl" >"$OUT/fuse15d.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 7b --seqs 384 --variants ours+compile --profile \
        --json "$OUT/extract7d.jsonl" >"$OUT/extract7d.log" 2>&1) &
    wait
    timeout 240 torchrun --nproc_per_node 2 benchmarks/fuse.py --size 7b --zero 3 --micro 2 --accum 2 --steps 3 \
        --warmup 2 --loss-chunk 1024 --variants fusion+autockpt+fusedadam --json "$OUT/zero3.jsonl" >"$OUT/zero3.log" 2>&1
    tail -n 6 "$OUT/fuse15d.log" "$OUT/zero3.log"; grep -A 32 "profile:" "$OUT/extract7d.log" | cut -c1-200; tail -n 3 "$OUT/extract7d.log"
    ;;
five)  # extract.overlap against the synchronous loop, 7B: 384 rows (GPU 0) and 1,024 rows at 32K tokens (GPU 1)
    export BENCH_KEEP=1
    mkdir -p /tmp/g0 /tmp/g1
    (CUDA_VISIBLE_DEVICES=0 python3 benchmarks/extract.py --sizes 7b --seqs 384 --scratch /tmp/g0 \
        --variants ours+compile+sync,ours+compile --json "$OUT/extract7e.jsonl" >"$OUT/extract7e.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=1 python3 benchmarks/extract.py --sizes 7b --seqs 1024 --scratch /tmp/g1 \
        --variants ours+compile+sync@32768,ours+compile@32768 --json "$OUT/extract7f.jsonl" >"$OUT/extract7f.log" 2>&1) &
    wait
    for pair in "g0/bench-7b-ours+compile+sync-w1 g0/bench-7b-ours+compile-w1" \
                "g1/bench-7b-ours+compile+sync@32768-w1 g1/bench-7b-ours+compile@32768-w1"; do
        set -- $pair; n=0; bad=0
        for f in /tmp/$1/*.safetensors; do n=$((n + 1)); cmp -s "$f" "/tmp/$2/$(basename "$f")" || bad=$((bad + 1)); done
        echo "$1 vs $2: shards $n, differing $bad" | tee -a "$OUT/overlap_cmp.txt"
    done
    tail -n 4 "$OUT/extract7e.log" "$OUT/extract7f.log"
    ;;
six)  # extract.onepass: its tests on the GPU, the head's row statistics alone, then 7B extraction with the
      # compiled torch pass first and last (the first timed variant is the slowest) and the one-pass kernel between
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/extract/test_onepass.py >"$OUT/onepass_tests.log" 2>&1
    timeout 90 python3 benchmarks/head.py >"$OUT/head.log" 2>&1
    timeout 270 python3 benchmarks/extract.py --sizes 7b --seqs 384 \
        --variants ours+compile,ours+compile+onepass,ours+compile --json "$OUT/extract7g.jsonl" >"$OUT/extract7g.log" 2>&1
    tail -n 3 "$OUT/onepass_tests.log"; tail -n 14 "$OUT/head.log" | cut -c1-300; tail -n 5 "$OUT/extract7g.log" | cut -c1-300
    grep -h store_vs "$OUT/extract7g.jsonl" | cut -c1-700
    ;;
esac
