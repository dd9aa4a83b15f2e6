#!/usr/bin/env bash
# Downloads a public UVR MDX-Net model into models/ (for machines with internet access),
# together with UVR's parameter table (model_data.json) when it is not there yet.
#   scripts/fetch_model.sh UVR-MDX-NET-Inst_HQ_3      (or Kim_Vocal_2, UVR-MDX-NET-Voc_FT, ...)
# Sources: the model repository UVR and python-audio-separator download from.
set -euo pipefail
cd "$(dirname "$0")/.."

name=${1:?usage: scripts/fetch_model.sh MODEL_NAME (without .onnx)}
name=${name%.onnx}
dir=${MODELS_DIR:-models}
models_url=${UVR_MODELS_URL:-https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models}
table_url=${UVR_MODEL_DATA_URL:-https://raw.githubusercontent.com/TRvlvr/application_data/main/mdx_model_data/model_data.json}
mkdir -p "$dir"

if [[ ! -s "$dir/model_data.json" ]]; then
  echo "fetching UVR's model parameter table"
  curl -fL --retry 3 -o "$dir/model_data.json.part" "$table_url"
  mv "$dir/model_data.json.part" "$dir/model_data.json"
fi
if [[ -s "$dir/$name.onnx" ]]; then
  echo "$dir/$name.onnx is already there"
else
  echo "fetching $name.onnx"
  curl -fL --retry 3 -o "$dir/$name.onnx.part" "$models_url/$name.onnx"
  mv "$dir/$name.onnx.part" "$dir/$name.onnx"
fi
sha256sum "$dir/$name.onnx"
echo "installed: restart the processor (or start_local.sh) and pick it with \"model\": \"$name\" or DEFAULT_MODEL=$name"
