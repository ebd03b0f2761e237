# ruff: noqa: E501  (the stand-in scripts print lines as long as the real programs do)
"""Stand-in images for the stock framework images, built from the busybox test image.

Each family is a set of shell scripts under the command names the real image has
(``mmcls_train``, ``yolov5_predict_poll``...), taking the same flags, that read the layout
the real framework reads, refuse what it refuses, write the files it writes and print
progress the way it does, in seconds and without a GPU. A docker definition passes only
when its run with the stand-in passes (tests/containers/test_stock_definitions.py).

``build_standin(family)`` builds (once: the tag carries a hash of the scripts) the image
``ufdl-node-test/standin-<family>:<hash>`` ``FROM`` the busybox test image with the scripts
in ``/bin``, and returns its reference. Another family is a new entry of :data:`FAMILIES`
(``{command name: script}``); the shared shell functions in :data:`COMMON` are sourced
by every script. ``STANDIN_EPOCH_S`` in the containers' environment (the node's
``docker_env``) sets how long a stand-in epoch takes (default 0.3 s).

What the real images do, as read from their sources (waikato-datamining/mmclassification
``0.25.0_cpu``: ``predict_poll.py`` writes ``<image>.json`` of label scores and moves the
image to the output directory, and exits 0 after printing an error for a missing
directory; mmcv's text logger prints ``Epoch [e][i/n]`` and ``Epoch(val) [e][n]`` and links
``latest.pth`` to the last ``epoch_<e>.pth``; YOLOv5 prints each epoch as tqdm updates
joined by ``\\r``, reads ``dataset.yaml``'s ``path``/``train``/``val``/``nc``/``names``, finds
labels by replacing ``/images/`` with ``/labels/``, and refuses a dataset without labels).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import aiodocker

from .conftest import TEST_IMAGE

COMMON = r"""
fail() { echo "$*" >&2; exit 1; }
epoch_s() { echo "${STANDIN_EPOCH_S:-0.3}"; }
# the value of --name=V or --name V in "$@"; empty when absent
arg() {
  name="$1"; shift
  while [ $# -gt 0 ]; do
    case "$1" in
      "$name="*) echo "${1#*=}"; return 0 ;;
      "$name") echo "$2"; return 0 ;;
    esac
    shift
  done
}
# the files of directory $1 with an image extension (not recursive), one a line (read them with
# `while IFS= read -r`: a name may hold spaces, as a video frame's <video>@|frametime=<t>|.jpg does)
images_in() {
  for f in "$1"/*; do
    [ -f "$f" ] || continue
    case "$(echo "${f##*.}" | tr 'A-Z' 'a-z')" in jpg|jpeg|png|bmp) echo "$f" ;; esac
  done
}
# a YAML key's value in file $2 (comments and quotes dropped)
yaml_value() {
  sed -n "s/^$1:[[:space:]]*//p" "$2" | sed 's/[[:space:]]*#.*$//' | head -n 1
}
"""

MMCLS_TRAIN = r"""
config="$1"; shift
work_dir=$(arg --work-dir "$@")
[ -n "$config" ] || fail "usage: mmcls_train CONFIG --work-dir DIR"
[ -f "$config" ] || fail "FileNotFoundError: file \"$config\" does not exist"
[ -n "$work_dir" ] || fail "mmcls_train: --work-dir is required here"
[ -n "$MMCLS_CLASSES" ] || fail "KeyError: MMCLS_CLASSES is not set"
classes=$(echo "$MMCLS_CLASSES" | tr ',' ' ')
set -- $classes; num=$#
in_config=$(sed -n 's/.*num_classes=\([0-9]*\).*/\1/p' "$config" | head -n 1)
[ "$in_config" = "$num" ] || fail "AssertionError: num_classes=$in_config in the config, $num classes in MMCLS_CLASSES"
for checkpoint in $(sed -n "s/.*checkpoint='\([^']*\)'.*/\1/p" "$config"); do
  cat "$checkpoint" > /dev/null || fail "IOError: cannot read the pretrained checkpoint $checkpoint"
done
epochs=$(sed -n 's/.*max_epochs=\([0-9]*\).*/\1/p' "$config" | head -n 1)
interval=$(sed -n 's/^checkpoint_config = dict(interval=\([0-9]*\)).*/\1/p' "$config" | head -n 1)
[ -n "$epochs" ] || fail "KeyError: runner.max_epochs is not in the config"
train_images=0
for prefix in $(sed -n "s/.*data_prefix='\([^']*\)'.*/\1/p" "$config"); do
  [ -d "$prefix" ] || fail "FileNotFoundError: [Errno 2] No such file or directory: '$prefix'"
  summary=""
  for class in $classes; do
    n=0; [ -d "$prefix/$class" ] && n=$(images_in "$prefix/$class" | wc -l)
    summary="$summary $class=$n"
    case "$prefix" in */train) train_images=$((train_images + n)) ;; esac
  done
  echo "$(date '+%Y-%m-%d %H:%M:%S'),000 - mmcls - INFO - data_prefix $prefix:$summary"
done
[ "$train_images" -gt 0 ] || fail "ValueError: the train split has no images of the classes $MMCLS_CLASSES"
mkdir -p "$work_dir" || fail "cannot make $work_dir"
iters=$(( (train_images + 1) / 2 ))
e=1
while [ "$e" -le "$epochs" ]; do
  i=1
  while [ "$i" -le "$iters" ]; do
    sleep "$(awk "BEGIN { print $(epoch_s) / $iters }")"
    echo "$(date '+%Y-%m-%d %H:%M:%S'),000 - mmcls - INFO - Epoch [$e][$i/$iters]	lr: 1.000e-01, eta: 0:00:01, time: 0.100, data_time: 0.010, memory: 0, loss: 0.$((90 - e))"
    i=$((i + 1))
  done
  echo "$(date '+%Y-%m-%d %H:%M:%S'),000 - mmcls - INFO - Epoch(val) [$e][1]	accuracy_top-1: 50.0000"
  if [ -z "$interval" ] || [ $((e % interval)) -eq 0 ] || [ "$e" -eq "$epochs" ]; then
    printf 'standin mmcls checkpoint\nepoch=%s\nclasses=%s\n' "$e" "$MMCLS_CLASSES" > "$work_dir/epoch_$e.pth"
    ln -sf "epoch_$e.pth" "$work_dir/latest.pth"
  fi
  e=$((e + 1))
done
"""

MMCLS_PREDICT_POLL = r"""
model=$(arg --model "$@"); config=$(arg --config "$@")
pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
for required in model config pin pout; do
  eval "v=\$$required"
  [ -n "$v" ] || fail "mmcls_predict_poll: error: the following arguments are required: --model, --config, --prediction_in, --prediction_out"
done
# init_model fails on a missing file; the poller's failures are printed, the exit is 0
[ -f "$model" ] || fail "FileNotFoundError: $model"
cat "$model" > /dev/null || fail "PermissionError: [Errno 13] Permission denied: '$model'"
[ -f "$config" ] || fail "FileNotFoundError: file \"$config\" does not exist"
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then
  echo "Traceback (most recent call last):"
  echo "IOError: Input or output directory does not exist: $pin, $pout"
  exit 0
fi
[ -n "$MMCLS_CLASSES" ] || fail "KeyError: MMCLS_CLASSES is not set"
n=0
images_in "$pin" | while IFS= read -r image; do
  name=$(basename "$image"); stem="${name%.*}"
  # the first class gets the highest score, in the real image's {label: score} JSON
  json="{"; score=90; sep=""
  for class in $(echo "$MMCLS_CLASSES" | tr ',' ' '); do
    json="$json$sep\"$class\": 0.$score"; sep=", "; score=$((score / 2 + 1))
  done
  echo "$json}" > "$pout/$stem.json"
  mv "$image" "$pout/$name"
  n=$((n + 1))
  echo "Processed $n: $name"
done
"""

YOLOV5_TRAIN = r"""
data=$(arg --data "$@"); weights=$(arg --weights "$@"); epochs=$(arg --epochs "$@")
project=$(arg --project "$@"); name=$(arg --name "$@"); img=$(arg --img "$@")
[ -f "$data" ] || fail "AssertionError: ERROR: $data does not exist"
[ -f "$weights" ] || fail "AssertionError: $weights missing, try downloading from https://github.com/ultralytics/yolov5/releases"
cat "$weights" > /dev/null || fail "PermissionError: [Errno 13] Permission denied: '$weights'"
root=$(yaml_value path "$data"); train=$(yaml_value train "$data"); nc=$(yaml_value nc "$data")
names=$(yaml_value names "$data")
[ -n "$nc" ] && [ -n "$names" ] || fail "AssertionError: $data needs nc and names"
count=$(echo "$names" | tr -cd ',' | wc -c); [ "$names" = "[]" ] && count=-1
[ $((count + 1)) -eq "$nc" ] || fail "AssertionError: $((count + 1)) names found for nc=$nc dataset in $data"
case "$train" in /*) dir="$train" ;; *) dir="$root/$train" ;; esac
[ -d "$dir" ] || fail "Exception: train: $dir does not exist"
images=$(images_in "$dir" | wc -l)
[ "$images" -gt 0 ] || fail "Exception: train: No images found in $dir"
labels_dir=$(echo "$dir/" | sed 's|/images/|/labels/|'); labels=0
for f in "$labels_dir"*.txt; do
  [ -f "$f" ] || continue
  while read -r cls rest; do
    [ -n "$cls" ] || continue
    [ "$cls" -lt "$nc" ] || fail "AssertionError: Label class $cls exceeds nc=$nc in $data"
  done < "$f"
  labels=$((labels + 1))
done
[ "$labels" -gt 0 ] || fail "AssertionError: train: No labels in $labels_dir. Can not train without labels."
out="$project/$name"; mkdir -p "$out/weights" || fail "cannot make $out"
batches=$images; [ "$batches" -ge 3 ] || batches=3; last=$((epochs - 1)); e=0
echo "      Epoch   gpu_mem       box       obj       cls    labels  img_size"
while [ "$e" -le "$last" ]; do
  b=1; line=""
  while [ "$b" -le "$batches" ]; do
    pct=$((b * 100 / batches))
    line="$line$(printf '\r%11s %9s %9s %9s %9s %9s %9s: %3s%%|#####     | %s/%s [00:01<00:00,  2.00it/s]' "$e/$last" 0G 0.1 0.02 0.03 9 "$img" "$pct" "$b" "$batches")"
    b=$((b + 1))
  done
  sleep "$(epoch_s)"
  printf '%s\n' "$line"
  printf '%22s %11s %11s %11s %11s %11s %11s: 100%%|##########| 1/1 [00:00<00:00,  4.00it/s]\n' Class Images Labels P R mAP@.5 mAP@.5:.95
  e=$((e + 1))
done
printf 'standin yolov5 weights\nnc=%s\nnames=%s\n' "$nc" "$names" > "$out/weights/best.pt"
cp "$out/weights/best.pt" "$out/weights/last.pt"
echo "$epochs epochs completed. Results saved to $out"
"""

YOLOV5_EXPORT = r"""
weights=$(arg --weights "$@"); include=$(arg --include "$@")
[ -f "$weights" ] || fail "FileNotFoundError: [Errno 2] No such file or directory: '$weights'"
[ "$include" = "onnx" ] || fail "yolov5_export: this stand-in exports onnx only, not $include"
{ echo "standin onnx"; cat "$weights"; } > "${weights%.pt}.onnx"
echo "ONNX: export success, saved as ${weights%.pt}.onnx"
"""

YOLOV5_PREDICT_POLL = r"""
model=$(arg --model "$@"); data=$(arg --data "$@")
pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
[ -f "$model" ] || fail "FileNotFoundError: $model"
cat "$model" > /dev/null || fail "PermissionError: [Errno 13] Permission denied: '$model'"
[ -f "$data" ] || fail "FileNotFoundError: $data"
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then
  echo "Traceback (most recent call last):"
  echo "IOError: Input or output directory does not exist: $pin, $pout"
  exit 0
fi
names=$(yaml_value names "$data" | tr -d "[]'\" ")
first=$(echo "$names" | cut -d, -f1)
n=0
images_in "$pin" | while IFS= read -r image; do
  name=$(basename "$image"); stem="${name%.*}"
  { echo "file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score"
    echo "$name,1,2,11,12,0.01,0.02,0.11,0.12,0,$first,0.87"; } > "$pout/$stem-rois.csv"
  mv "$image" "$pout/$name"
  n=$((n + 1))
  echo "Processed $n: $name"
done
"""

# YOLOv7's programs as its image has them: training as YOLOv5's (--batch-size, --cfg may be
# left out: the network then comes from the checkpoint), an end-to-end ONNX export with no
# --include, and a poller that reads the class names from the model (no dataset.yaml).
YOLOV7_TRAIN = YOLOV5_TRAIN.replace("echo \"$epochs epochs completed", "echo \"$epochs epochs (yolov7) completed")
YOLOV7_EXPORT = r"""
weights=$(arg --weights "$@"); topk=$(arg --topk-all "$@")
[ -f "$weights" ] || fail "FileNotFoundError: [Errno 2] No such file or directory: '$weights'"
[ -n "$topk" ] || fail "yolov7_export: --topk-all is needed with --end2end"
{ echo "standin onnx end2end topk=$topk"; cat "$weights"; } > "${weights%.pt}.onnx"
echo "ONNX export success, saved as ${weights%.pt}.onnx"
"""
YOLOV7_PREDICT_POLL = YOLOV5_PREDICT_POLL.replace(
    '[ -f "$data" ] || fail "FileNotFoundError: $data"\n', "").replace(
    'names=$(yaml_value names "$data" | tr -d "[]\'\\" ")',
    'names=$(sed -n "s/^names=//p" "$model" | tr -d "[]\'\\" ")')

FAMILIES: dict[str, dict[str, str]] = {
    "mmclassification": {"mmcls_train": MMCLS_TRAIN, "mmcls_predict_poll": MMCLS_PREDICT_POLL},
    "yolov5": {"yolov5_train": YOLOV5_TRAIN, "yolov5_export": YOLOV5_EXPORT,
               "yolov5_predict_poll": YOLOV5_PREDICT_POLL},
    "yolov7": {"yolov7_train": YOLOV7_TRAIN, "yolov7_export": YOLOV7_EXPORT,
               "yolov7_predict_poll": YOLOV7_PREDICT_POLL},
}


def _context(scripts: dict[str, str]) -> bytes:
    """A build context: a Dockerfile FROM the test image and the scripts, as a tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name: str, text: str, mode: int) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", f"FROM {TEST_IMAGE}\nCOPY bin/ /bin/\n", 0o644)
        for command, body in sorted(scripts.items()):
            add(f"bin/{command}", f"#!/bin/sh\n{COMMON}\n{body}", 0o755)
    return buffer.getvalue()


async def build_image(name: str, scripts: dict[str, str]) -> str:
    """``ufdl-node-test/standin-<name>:<hash>`` with `scripts` (``{command: body}``) in /bin,
    built FROM the busybox test image unless it is there already; its reference."""
    digest = hashlib.sha256(repr((COMMON, sorted(scripts.items()))).encode()).hexdigest()[:12]
    tag = f"ufdl-node-test/standin-{name}:{digest}"
    async with aiodocker.Docker() as docker:
        try:
            await docker.images.inspect(tag)
            return tag
        except aiodocker.DockerError:
            pass
        await docker.images.build(fileobj=io.BytesIO(_context(scripts)), encoding="identity",
                                  tag=tag, rm=True, forcerm=True)
        await docker.images.inspect(tag)  # raises if the build made nothing
    return tag


async def build_standin(family: str) -> str:
    """The stand-in image of `family` (a key of :data:`FAMILIES`), built once."""
    return await build_image(family, FAMILIES[family])


def write_labelled_images(root: Path, per_label: dict[str, int]) -> list[Path]:
    """A folder of labelled images as ``dataset=DIR`` takes it: ``root/<label>/<n>.png``
    (tiny valid PNGs, each different); the files written."""
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
    written = []
    for label, count in per_label.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            path = root / label / f"{label}-{n:03d}.png"
            path.write_bytes(png + f"{label}{n}".encode())  # trailing bytes: distinct files
            written.append(path)
    return written
