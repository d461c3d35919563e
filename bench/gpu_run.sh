#!/usr/bin/env bash
# The whole GPU job in stages, for a machine where bpy cannot run (render here first, then carry):
#
#   python bench/gpu_data.py pack --renders runs/gpuA --munit /path/to/MUNIT   # here: fills .gpu/
#   bash bench/gpu_run.sh OUT setup tests ddp speed calib                     # there: first call
#   bash bench/gpu_run.sh OUT setup efficacy                                  # there: second call
#   bash bench/gpu_run.sh OUT setup translate_speed tests_bg translator translate_all efficacy_table
#                                                # there: one call, tests on the CPU cores beside the GPU work
#   bash bench/gpu_run.sh OUT setup tests_bg graphs_speed                      # CUDA graphs against both
#   bash bench/gpu_run.sh OUT setup upsample_speed                             # gen.upsample phases vs plain
#   (more stages: speed2 = both trainers with cuDNN autotuning + a profile, compile_speed (COMPILE_SETTINGS), translate_speed)
#
# Each stage runs under its own time limit and logs to OUT/<stage>.log; a failing stage is noted in
# OUT/stages.txt and the next one still runs. The short table (bench/gpu_data.py summary) comes last.
# Budgets in seconds (environment): TRAIN_S (translator training in `efficacy` and `translator`), SEG_ITERS
# (segmenter iterations per model), STYLES (translations per render), DEADLINE_S (efficacy_table takes what is
# left of it, counted from the start of this script), TESTS_S and TEST_WORKERS (the tests). TRANSLATOR_SET: more
# `--set KEY=VALUE` for the translator (e.g. "cuda_graphs=true"; cuda_graphs=auto: on if graphs_speed captured); EFFICACY_BUDGET (e.g. 700it: a fixed budget
# instead of the time left) and EFFICACY_SOURCES for efficacy_table; QUALITY=0 skips backend.evaluate.
set -u
OUT=${1:?usage: gpu_run.sh OUT STAGE...}
shift
WORK=${WORK:-/tmp/gpu}
LOGS=$WORK/logs  # everything small the run makes; packed into OUT/logs.tgz after every stage (8 files come back)
mkdir -p "$OUT" "$LOGS"
TRAIN_S=${TRAIN_S:-150}
SEG_ITERS=${SEG_ITERS:-1500}
STYLES=${STYLES:-5}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the stages here, before spending GPU time

stage() {  # stage NAME LIMIT_S FUNCTION ARGS...: SIGTERM at the limit (training checkpoints then), KILL 45 s later
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout -s TERM -k 45 "$limit" bash -c '"$@"' _ "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "stage $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$LOGS/stages.txt"
    tail -n 4 "$LOGS/$name.log"
    tar czf "$OUT/logs.tgz" -C "$LOGS" .
}

setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'numpy', numpy.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    mkdir -p "$WORK"
    if [ -f "$WORK/unpacked" ]; then echo "already unpacked in $WORK"; return 0; fi  # a second call, warm machine
    if [ ! -d ../shared/data/real ]; then  # the tests' real frames, where ../shared is not beside the checkout
        mkdir -p ../shared/data/real && cp -r .gpu/shared/. ../shared/data/real/
    fi
    $PY bench/gpu_data.py unpack --to "$WORK" && touch "$WORK/unpacked"
}

tests() {  # the backend tests on this stack (tiny set rendered where bpy runs; the video test needs ffmpeg)
    LAPSYNTH_TEST_DATASET=$PWD/.gpu/tiny_A $PY -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-12}" \
        -o junit_family=xunit2 --junitxml "$LOGS/tests.xml" --durations 15 \
        tests/test_graphs.py tests/test_train.py tests/test_translate.py tests/test_evaluate.py tests/test_images.py \
        tests/test_dataset.py tests/test_devices.py tests/test_architecture.py tests/test_cut.py \
        tests/test_baselines.py tests/test_efficacy.py tests/test_segment_recipe.py \
        --deselect tests/test_translate.py::test_frames_from_the_shared_clip \
        --deselect tests/test_architecture.py::test_one_version_string
    # deselected: the video test needs ffmpeg; the version test needs the package installed (pip metadata),
    # and here the checkout is only on PYTHONPATH
}

tests_bg() {  # the tests on TEST_WORKERS single-threaded CPU workers while the GPU stages run (waited for last)
    (export OMP_NUM_THREADS=1; stage tests "${TESTS_S:-420}" tests >"$LOGS/tests_bg.out" 2>&1) &
    echo $! >"$WORK/tests.pid"
}

ddp() {  # torchrun with NCCL on the one GPU: the DDP path of the trainer, end to end
    torchrun --standalone --nproc_per_node 1 -m backend.train --config tests/tiny.yaml \
        --renders .gpu/tiny_A --real ../shared/data/real/cholec80_vid03 --out "$WORK/ddp" --iterations 20 \
        --device "$DEVICE" && ls "$WORK/ddp/checkpoints"
}

speed() {  # the paper's configuration, batch 1, 256x256: NVlabs/MUNIT and ours, one process
    $PY bench/train_bench.py --device "$DEVICE" --crops 256x256 --iters 30 --warmup 5 --reference .gpu/munit \
        --renders "$WORK/A" --real "$WORK/endo/train/images" \
        --settings none bf16 bf16,channels_last none,channels_last bf16,compile --json "$LOGS/train_bench.json"
}

graphs_speed() {  # CUDA graphs (cuda_graphs) against eager and NVlabs/MUNIT, one process, then a profile
    $PY bench/train_bench.py --device "$DEVICE" --crops 256x256 --iters 30 --warmup 10 --reference .gpu/munit \
        --renders "$WORK/A" --real "$WORK/endo/train/images" --rounds "${ROUNDS:-2}" \
        --settings none none,graphs bf16 bf16,graphs --json "$LOGS/train_bench_graphs.json"
}

upsample_speed() {  # gen.upsample phases (default) against plain: the eager GPU step may lose to small kernels
    for up in phases plain; do
        $PY bench/train_bench.py --device "$DEVICE" --crops 256x256 --iters 30 --warmup 10 --reference .gpu/munit \
            --settings none bf16 bf16,graphs --set gen.upsample=$up --json "$LOGS/train_bench_upsample_$up.json" || return 1
    done
}

compile_speed() {  # torch.compile of our networks: compiling takes minutes, so a stage of its own
    $PY bench/train_bench.py --device "$DEVICE" --crops 256x256 --iters 30 --warmup 10 --reference .gpu/munit \
        --settings ${COMPILE_SETTINGS:-bf16 bf16,compile} --json "$LOGS/train_bench_compile.json"
}

speed2() {  # both trainers with cuDNN autotuning (as NVlabs/MUNIT's train.py), then a profile of ours
    $PY bench/train_bench.py --device "$DEVICE" --crops 256x256 --iters 30 --warmup 10 --reference .gpu/munit \
        --settings none bf16 --profile 10 --json "$LOGS/train_bench2.json"
}

translate_speed() {  # 452x256, K styles, PNG writes: images/s at the batch sizes of TRANSLATE_BATCHES
    # (and each gen.upsample of TRANSLATE_UPSAMPLE, e.g. "phases plain")
    for b in ${TRANSLATE_BATCHES:-16 64}; do
        $PY bench/translate_bench.py --data "$WORK/A" --device "$DEVICE" --frames "${TRANSLATE_FRAMES:-600}" --styles "$STYLES" \
            --batch-frames $b --workers 14 ${TRANSLATE_UPSAMPLE:+--upsample $TRANSLATE_UPSAMPLE} \
            --json "$LOGS/translate_bench_$b.json" || return 1
    done
}

translator() {  # paper widths, bf16, until SIGTERM (checkpoints then; a rerun resumes)
    trap 'echo "translator: SIGTERM, waiting for the checkpoint"' TERM  # a handler, so python still gets its own
    local extra=${TRANSLATOR_SET:-}
    if [ "$extra" = cuda_graphs=auto ]; then  # on where graphs_speed captured the updates earlier in this run
        grep -q '"graphs": "on"' "$LOGS/train_bench_graphs.json" 2>/dev/null && extra=cuda_graphs=true || extra=
        echo "translator: ${extra:-cuda_graphs off (not captured in graphs_speed)}"
    fi
    $PY -m backend.train --config "${TRAIN_CONFIG:-configs/default.yaml}" --renders "$WORK/A" \
        --real "$WORK/endo/train/images" --out "$WORK/T" --device "$DEVICE" \
        --set snapshot_save_iter=500 --set image_save_iter=1000000 --set log_iter=100 --set num_workers=8 \
        --set batch_size="${TRANSLATOR_BATCH:-1}" ${extra:+--set $extra}
    local rc=$?
    cp "$WORK/T/log.jsonl" "$LOGS/translator_log.jsonl"
    return $rc
}

translate_all() {
    local ckpt
    ckpt=$(ls "$WORK"/T/checkpoints/ckpt_*.pt | tail -n 1)
    $PY -m backend.translate --checkpoint "$ckpt" --data "$WORK/A" --styles "$STYLES" --device "$DEVICE" \
        --batch-frames 32 --workers 14 --sheet 8 --overwrite || return 1
    cp "$WORK/A/translation_sheet.png" "$OUT/" 2>/dev/null
    [ "${QUALITY:-1}" = 0 ] && return 0
    $PY -m backend.evaluate --data "$WORK/A" --out "$WORK/quality" --device "$DEVICE" &&
        cp "$WORK/quality/translation_quality.json" "$LOGS/"
}

segment() {  # segment NAME ARGS...: train with identical settings, evaluate on the real val videos
    local name=$1
    shift
    $PY -m backend.segment train --resolution 448x256 --batch 8 --workers 10 --device "$DEVICE" --seed 0 \
        --preset endoscapes --out "$WORK/seg_$name.pt" "$@" &&
    $PY -m backend.segment eval --checkpoint "$WORK/seg_$name.pt" --real-images "$WORK/endo/val/images" \
        --real-masks "$WORK/endo/val/masks" --preset endoscapes --device "$DEVICE" --out "$WORK/eval_$name" &&
    cp "$WORK/eval_$name/table.json" "$LOGS/eval_$name.json"
}

efficacy_table() {  # backend.efficacy: every source x 2 seeds on the real val videos, wall budget from what is left
    local rc
    $PY -m backend.efficacy --synthetic "$WORK/A" --real-images "$WORK/endo/images" --real-masks "$WORK/endo/masks" \
        --split "$WORK/endo/split.json" --preset endoscapes --resolution "${EFFICACY_RES:-448x256}" --batch 8 --seeds 0,1 \
        --budget "${EFFICACY_BUDGET:-$1s}" --workers 8 --device "$DEVICE" \
        --sources "${EFFICACY_SOURCES:-render,translation,real,fda,colour,augmented}" \
        --out "$WORK/efficacy"
    rc=$?
    mkdir -p "$LOGS/efficacy" && cp "$WORK"/efficacy/*.json "$WORK"/efficacy/cells/*.json "$LOGS/efficacy/" 2>/dev/null
    cp "$WORK"/efficacy/efficacy_table.md "$WORK"/efficacy/efficacy.png "$WORK"/efficacy/examples.png "$OUT/" 2>/dev/null
    return $rc
}

calib() {  # everything the efficacy run does, at a tiny budget: finds CUDA-path bugs and sets the budgets
    stage translator 45 translator
    stage translate_all 50 translate_all
    stage seg_render 50 segment render --regime synthetic --synthetic "$WORK/A" --use render --iterations 100
}

efficacy() {
    stage translator "$TRAIN_S" translator
    stage translate_all 60 translate_all
    stage seg_render 90 segment render --regime synthetic --synthetic "$WORK/A" --use render \
        --iterations "$SEG_ITERS"
    stage seg_translation 90 segment translation --regime synthetic --synthetic "$WORK/A" --use translation \
        --iterations "$SEG_ITERS"
    stage seg_real 90 segment real --regime real --real-images "$WORK/endo/train/images" \
        --real-masks "$WORK/endo/train/masks" --finetune-iterations "$SEG_ITERS"
}

export -f stage setup tests ddp speed speed2 graphs_speed upsample_speed compile_speed translate_speed translator translate_all segment efficacy_table
export WORK OUT LOGS STYLES PY DEVICE
for s in "$@"; do
    case $s in
        setup) stage setup 120 setup ;;
        tests) stage tests "${TESTS_S:-300}" tests ;;
        ddp) stage ddp 45 ddp ;;
        speed) stage speed 130 speed ;;
        speed2) stage speed2 120 speed2 ;;
        compile_speed) stage compile_speed 300 compile_speed ;;
        graphs_speed) stage graphs_speed 200 graphs_speed ;;
        upsample_speed) stage upsample_speed 240 upsample_speed ;;
        translate_speed) stage translate_speed 150 translate_speed ;;
        tests_bg) tests_bg ;;
        translator) stage translator "$TRAIN_S" translator ;;
        translate_all) stage translate_all 150 translate_all ;;
        efficacy_table)  # what is left before DEADLINE_S, less 100 s for the FDA/colour sets, the probe and the report
            left=$((${DEADLINE_S:-540} - SECONDS))
            stage efficacy_table $((left - 10)) efficacy_table $((left - 100)) ;;
        calib) calib ;;
        efficacy) efficacy ;;
        *) echo "unknown stage $s" ;;
    esac
done
if [ -f "$WORK/tests.pid" ]; then  # the background tests end under their own time limit
    wait "$(cat "$WORK/tests.pid")" 2>/dev/null || while kill -0 "$(cat "$WORK/tests.pid")" 2>/dev/null; do sleep 2; done
    rm -f "$WORK/tests.pid"
    tail -n 25 "$LOGS/tests.log"
    tar czf "$OUT/logs.tgz" -C "$LOGS" .
fi
$PY bench/gpu_data.py summary "$LOGS" | tee "$OUT/summary.txt"
