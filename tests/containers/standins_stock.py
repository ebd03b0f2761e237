# ruff: noqa: E501  (the stand-in scripts print lines as long as the real programs do)
"""Stand-in images for the other stock framework families (beside :mod:`.standins`).

TensorFlow 1.14 image classification (``tfic-retrain``, ``tfic-export``, ``tfic-stats``,
``tfic-poll``), Coqui STT (``stt_alphabet``, ``stt_train``, ``stt_export``,
``stt_transcribe_poll``), MMDetection 2020-03-01 (``mmdet_train``, ``mmdet_predict``),
YOLACT++ (``yolactpp_train``, ``yolactpp_predict``) and the TensorFlow Object Detection API
1.14 (``objdet_train``, ``objdet_export``, ``objdet_predict``): each takes the real command's
flags, refuses a missing input the way the real one does (a missing directory or file is one
error line and a nonzero exit, except the pollers, which print and exit 0 as the real ones
do), reads the layout the stock dataset options give it, writes what the real one writes
(``graph.pb``/``labels.txt``/``info.json``/``model.tflite``; ``<image>.csv`` of
``label,probability``; ``<image>-rois.csv``; ``<audio>.txt``; ``latest.pth``;
``frozen_inference_graph.pb``) and prints its progress lines (``: Step N:``, ``Epoch N |
Training | ... Steps: S``, mmcv's ``Epoch [e][i/n]``). The images the pollers predict on are
moved beside their predictions, as the real pollers do.

``build_stock_standin(family)`` builds ``ufdl-node-test/standin-<family>:<hash>`` once (the
helpers of :mod:`.standins`).
"""

from __future__ import annotations

from .standins import build_image

TFIC_RETRAIN = r"""
image_dir=$(arg --image_dir "$@"); lists=$(arg --image_lists_dir "$@"); graph=$(arg --output_graph "$@")
labels=$(arg --output_labels "$@"); info=$(arg --output_info "$@"); ckpt=$(arg --checkpoint_path "$@")
saved=$(arg --saved_model_dir "$@"); summaries=$(arg --summaries_dir "$@"); steps=$(arg --training_steps "$@")
[ -d "$image_dir" ] || fail "Image directory '$image_dir' not found."
classes=""; n=0
for d in "$image_dir"/*/; do
  [ -d "$d" ] || continue
  c=$(basename "$d"); [ "$(images_in "$d" | wc -l)" -gt 0 ] || continue
  classes="$classes$c "; n=$((n + 1))
done
[ "$n" -ge 2 ] || fail "Only $n valid folders of images found at $image_dir - multiple classes are needed for classification."
mkdir -p "$lists" "$saved/variables" "$summaries/train" "$summaries/validation" || fail "cannot write the outputs"
for t in training testing validation; do echo "{\"$t\": []}" > "$lists/$t.json"; done
s=0
while [ "$s" -lt "${steps:-10}" ]; do
  echo "INFO:tensorflow:$(date '+%Y-%m-%d %H:%M:%S.000000'): Step $s: Train accuracy = 50.0%"
  s=$((s + 1))
done
echo "standin graph" > "$graph"
: > "$labels"; for c in $classes; do echo "$c" >> "$labels"; done
printf '{"labels": "%s"}\n' "$(echo $classes | tr ' ' ',')" > "$info"
echo "standin checkpoint" > "$ckpt.index"
echo "standin saved model" > "$saved/saved_model.pb"
echo "events" > "$summaries/train/events.out.tfevents.1"; echo "events" > "$summaries/validation/events.out.tfevents.1"
echo "INFO:tensorflow:Final test accuracy = 50.0%"
"""

TFIC_EXPORT = r"""
saved=$(arg --saved_model_dir "$@"); tflite=$(arg --tflite_model "$@")
[ -f "$saved/saved_model.pb" ] || fail "OSError: SavedModel file does not exist at: $saved"
{ echo "standin tflite"; cat "$saved/saved_model.pb"; } > "$tflite"
"""

TFIC_STATS = r"""
graph=$(arg --graph "$@"); out=$(arg --output_stats "$@"); preds=$(arg --output_preds "$@")
[ -f "$graph" ] || fail "ValueError: Could not open '$graph'."
echo "statistic,value" > "$out"; echo "image,label" > "$preds"
"""

TFIC_POLL = r"""
graph=$(arg --graph "$@"); info=$(arg --info "$@"); pin=$(arg --in_dir "$@"); pout=$(arg --out_dir "$@")
[ -f "$graph" ] || fail "ValueError: Could not open '$graph'."
[ -f "$info" ] || fail "FileNotFoundError: $info"
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then echo "Input or output directory does not exist: $pin, $pout"; exit 0; fi
labels=$(sed -n 's/.*"labels": "\([^"]*\)".*/\1/p' "$info" | tr ',' ' ')
images_in "$pin" | while IFS= read -r image; do
  name=$(basename "$image"); stem="${name%.*}"; p=80
  { echo "label,probability"; for l in $labels; do echo "$l,0.$p"; p=$((p / 4 + 1)); done; } > "$pout/$stem.csv"
  mv "$image" "$pout/$name"
done
"""

STT_ALPHABET = r"""
out=$(arg -o "$@"); shift
inputs=""
while [ $# -gt 0 ] && [ "$1" != "-o" ]; do inputs="$inputs $1"; shift; done
for f in $inputs; do [ "$f" = "-i" ] && continue; [ -f "$f" ] || fail "FileNotFoundError: $f"; done
for f in $inputs; do [ "$f" = "-i" ] || tail -n +2 "$f"; done | sed 's/^[^,]*,[^,]*,//' | fold -w1 | sort -u > "$out"
"""

STT_TRAIN = r"""
alphabet=$(arg --alphabet_config_path "$@"); epochs=$(arg --epochs "$@")
load=$(arg --load_checkpoint_dir "$@"); save=$(arg --save_checkpoint_dir "$@")
[ -f "$alphabet" ] || fail "FileNotFoundError: $alphabet"
for split in --train_files --dev_files --test_files; do
  f=$(arg "$split" "$@"); [ -f "$f" ] || fail "FileNotFoundError: $f"
  tail -n +2 "$f" | while IFS=, read -r wav size text; do
    [ -f "$(dirname "$f")/$wav" ] || fail "FileNotFoundError: $wav (listed in $f)"
  done || exit 1
done
[ -d "$load" ] || fail "FileNotFoundError: no checkpoint in $load"
mkdir -p "$save" || fail "cannot make $save"
e=0
while [ "$e" -lt "${epochs:-1}" ]; do
  echo "Epoch $e |   Training | Elapsed Time: 0:00:01 | Steps: 3 | Loss: 10.0"
  echo "Epoch $e | Validation | Elapsed Time: 0:00:01 | Steps: 1 | Loss: 9.0 | Dataset: $(arg --dev_files "$@")"
  sleep "$(epoch_s)"; e=$((e + 1))
done
echo "standin stt checkpoint" > "$save/best_dev-1.index"
"""

STT_EXPORT = r"""
ckpt=$(arg --checkpoint_dir "$@"); out=$(arg --export_dir "$@"); q=$(arg --export_quantize "$@")
[ -f "$ckpt/best_dev-1.index" ] || fail "Checkpoint directory ($ckpt) does not contain a valid checkpoint state."
mkdir -p "$out"; printf 'standin tflite quantize=%s\n' "$q" > "$out/output_graph.tflite"
"""

STT_TRANSCRIBE_POLL = r"""
model=$(arg --model "$@"); pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
[ -f "$model" ] || fail "FileNotFoundError: $model"
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then echo "Input or output directory does not exist: $pin, $pout"; exit 0; fi
find "$pin" -name '*.wav' | while IFS= read -r f; do
  name=$(basename "$f"); stem="${name%.*}"
  printf 'standin transcript of %s' "$stem" > "$pout/$stem.txt"
  mv "$f" "$pout/$name"
done
"""

# A predictor writing one box per image, labelled with the first class of labels file $1.
ROIS = r"""
rois() {
  first=$(head -n 1 "$1" | sed "s/^[^']*name: *'\([^']*\)'.*/\1/" | cut -d, -f1 | tr -d "' ")
  images_in "$2" | while IFS= read -r image; do
    name=$(basename "$image"); stem="${name%.*}"
    { echo "file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score,poly_x,poly_y"
      echo "$name,2,3,11,13,0.1,0.1,0.5,0.6,0,$first,0.75,\"2,11,11\",\"3,3,13\""; } > "$3/$stem-rois.csv"
    mv "$image" "$3/$name"
  done
}
"""

MMDET_TRAIN = r"""
config="$1"
[ -f "$config" ] || fail "FileNotFoundError: file \"$config\" does not exist"
[ -f "$MMDET_CLASSES" ] || fail "FileNotFoundError: MMDET_CLASSES $MMDET_CLASSES"
[ -f "$MMDET_DATA/train/annotations.json" ] || fail "FileNotFoundError: $MMDET_DATA/train/annotations.json"
epochs=$(sed -n 's/^total_epochs *= *\([0-9]*\).*/\1/p' "$config" | head -n 1)
e=1
while [ "$e" -le "${epochs:-1}" ]; do
  echo "$(date '+%Y-%m-%d %H:%M:%S'),000 - mmdet - INFO - Epoch [$e][1/2]	lr: 0.00100, loss: 1.0"
  echo "$(date '+%Y-%m-%d %H:%M:%S'),000 - mmdet - INFO - Epoch [$e][2/2]	lr: 0.00100, loss: 0.9"
  sleep "$(epoch_s)"; e=$((e + 1))
done
printf 'standin mmdet\nclasses=%s\n' "$(cat "$MMDET_CLASSES")" > "${MMDET_OUTPUT}latest.pth"
echo '{"mode": "train", "epoch": 1}' > "${MMDET_OUTPUT}standin.log.json"; echo "log" > "${MMDET_OUTPUT}standin.log"
"""

MMDET_PREDICT = ROIS + r"""
ckpt=$(arg --checkpoint "$@"); config=$(arg --config "$@"); labels=$(arg --labels "$@")
pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
for f in "$ckpt" "$config" "$labels"; do [ -f "$f" ] || fail "FileNotFoundError: $f"; done
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then echo "Input or output directory does not exist: $pin, $pout"; exit 0; fi
rois "$labels" "$pin" "$pout"
"""

YOLACT_TRAIN = r"""
[ -f "$YOLACTPP_CONFIG" ] || fail "FileNotFoundError: $YOLACTPP_CONFIG"
save=$(arg --save_folder "$@"); log=$(arg --log_folder "$@")
[ -f "/weights/resnet50-19c8e357.pth" ] || fail "FileNotFoundError: /weights/resnet50-19c8e357.pth"
[ -f /data/train/annotations.json ] || fail "FileNotFoundError: /data/train/annotations.json"
names=$(sed -n "s/.*'class_names': *(\(.*\)).*/\1/p" "$YOLACTPP_CONFIG")
nc=$(sed -n "s/.*'num_classes': *\([0-9]*\).*/\1/p" "$YOLACTPP_CONFIG")
[ -n "$names" ] && [ -n "$nc" ] || fail "KeyError: class_names and num_classes must be in $YOLACTPP_CONFIG"
[ $(($(echo "$names" | tr -cd ',' | wc -c) + 2)) -eq "$nc" ] || fail "AssertionError: num_classes $nc is not the $names and the background"
echo "[  0]      10 || B: 1.000 | C: 1.000 | M: 1.000 | S: 0.100 | T: 3.100 || ETA: 0:00:01 || timer: 0.100"
printf 'standin yolact\n' > "${save}model_1_100.pth"; echo "log" > "${log}model.log"
"""

YOLACT_PREDICT = ROIS + r"""
model=$(arg --model "$@"); pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
[ -f "$model" ] || fail "FileNotFoundError: $model"
[ -f "$YOLACTPP_CONFIG" ] || fail "FileNotFoundError: $YOLACTPP_CONFIG"
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then echo "Input or output directory does not exist: $pin, $pout"; exit 0; fi
labels=/tmp/labels; sed -n "s/.*'class_names': (\([^)]*\)).*/\1/p" "$YOLACTPP_CONFIG" > "$labels"
[ -s "$labels" ] || echo "object" > "$labels"
rois "$labels" "$pin" "$pout"
"""

OBJDET_TRAIN = r"""
config=$(arg --pipeline_config_path "$@"); model_dir=$(arg --model_dir "$@"); steps=$(arg --num_train_steps "$@")
[ -f "$config" ] || fail "ValueError: $config not found"
[ -d /models/pretrainedmodel ] || fail "NotFoundError: /models/pretrainedmodel"
! grep -q '[$]{' "$config" || fail "google.protobuf.text_format.ParseError: $(grep -n '[$]{' "$config" | head -n 1)"
nc=$(sed -n 's/.*num_classes: *\([0-9]*\).*/\1/p' "$config" | head -n 1)
for f in $(sed -n 's/.*input_path: *"\([^"]*\)".*/\1/p' "$config"); do [ -f "$f" ] || fail "NotFoundError: $f"; done
for f in $(sed -n 's/.*label_map_path: *"\([^"]*\)".*/\1/p' "$config"); do
  [ -f "$f" ] || fail "NotFoundError: $f"
  [ "$(grep -c "name:" "$f")" = "$nc" ] || fail "ValueError: num_classes is $nc in $config, the label map $f has $(grep -c "name:" "$f") classes"
done
s=100
while [ "$s" -le "${steps:-100}" ]; do echo "INFO:tensorflow:global_step/sec: 1.0"; echo "INFO:tensorflow:loss = 1.0, step = $s"; s=$((s + 100)); done
for ext in index meta data-00000-of-00001; do echo standin > "${model_dir}model.ckpt-$steps.$ext"; done
echo standin > "${model_dir}graph.pbtxt"
"""

OBJDET_EXPORT = r"""
prefix=$(arg --trained_checkpoint_prefix "$@"); out=$(arg --output_directory "$@")
[ -f "$prefix.index" ] || fail "ValueError: The passed save_path is not a valid checkpoint: $prefix"
mkdir -p "$out/saved_model"; echo standin > "$out/frozen_inference_graph.pb"; echo standin > "$out/saved_model/saved_model.pb"
"""

OBJDET_PREDICT = ROIS + r"""
graph=$(arg --graph "$@"); labels=$(arg --labels "$@"); pin=$(arg --prediction_in "$@"); pout=$(arg --prediction_out "$@")
for f in "$graph" "$labels"; do [ -f "$f" ] || fail "FileNotFoundError: $f"; done
if [ ! -d "$pin" ] || [ ! -d "$pout" ]; then echo "Input or output directory does not exist: $pin, $pout"; exit 0; fi
grep "name:" "$labels" | head -n 1 > /tmp/first
rois /tmp/first "$pin" "$pout"
"""

STOCK_FAMILIES: dict[str, dict[str, str]] = {
    "tensorflow-ic": {"tfic-retrain": TFIC_RETRAIN, "tfic-export": TFIC_EXPORT, "tfic-stats": TFIC_STATS,
                      "tfic-poll": TFIC_POLL},
    "coqui-stt": {"stt_alphabet": STT_ALPHABET, "stt_train": STT_TRAIN, "stt_export": STT_EXPORT,
                  "stt_transcribe_poll": STT_TRANSCRIBE_POLL},
    "mmdetection": {"mmdet_train": MMDET_TRAIN, "mmdet_predict": MMDET_PREDICT},
    "yolact": {"yolactpp_train": YOLACT_TRAIN, "yolactpp_predict": YOLACT_PREDICT},
    "tensorflow-od": {"objdet_train": OBJDET_TRAIN, "objdet_export": OBJDET_EXPORT, "objdet_predict": OBJDET_PREDICT},
}


async def build_stock_standin(family: str) -> str:
    """The stand-in image of `family` (a key of :data:`STOCK_FAMILIES`), built once."""
    return await build_image(family, STOCK_FAMILIES[family])
