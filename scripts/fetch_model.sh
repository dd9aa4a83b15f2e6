#!/usr/bin/env bash
# Downloads a public model into models/ (for machines with internet access):
#   scripts/fetch_model.sh UVR-MDX-NET-Inst_HQ_3                   MDX-Net .onnx (or Kim_Vocal_2, ...),
#                                                                  with UVR's parameter table
#   scripts/fetch_model.sh model_bs_roformer_ep_317_sdr_12.9755.ckpt
#                                                                  Roformer checkpoint with its YAML config
# Sources: the model repository UVR and python-audio-separator download from, and the
# application data repository their configs come from.
set -euo pipefail
cd "$(dirname "$0")/.."

arg=${1:?usage: scripts/fetch_model.sh NAME[.onnx] | NAME.ckpt}
dir=${MODELS_DIR:-models}
models_url=${UVR_MODELS_URL:-https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models}
data_url=${UVR_APP_DATA_URL:-https://raw.githubusercontent.com/TRvlvr/application_data/main/mdx_model_data}
table_url=${UVR_MODEL_DATA_URL:-$data_url/model_data.json}
mkdir -p "$dir"

fetch() { # URL DEST
  if [[ -s "$2" ]]; then
    echo "$2 is already there"
  else
    echo "fetching $(basename "$2")"
    curl -fL --retry 3 -o "$2.part" "$1"
    mv "$2.part" "$2"
  fi
}

case "$arg" in
  *.ckpt)
    name=${arg%.ckpt}
    fetch "$data_url/mdx_c_configs/$name.yaml" "$dir/$name.yaml"
    fetch "$models_url/$name.ckpt" "$dir/$name.ckpt"
    sha256sum "$dir/$name.ckpt" "$dir/$name.yaml"
    ;;
  *)
    name=${arg%.onnx}
    if [[ ! -s "$dir/model_data.json" ]]; then
      fetch "$table_url" "$dir/model_data.json"
    fi
    fetch "$models_url/$name.onnx" "$dir/$name.onnx"
    sha256sum "$dir/$name.onnx"
    ;;
esac
echo "installed: restart the processor (or start_local.sh) and pick it with \"model\": \"$name\" or DEFAULT_MODEL=$name"
