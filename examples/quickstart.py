"""`make demo`: embed the bundled sample photos, search them and draw the DINOv3 PCA picture.

    python examples/quickstart.py [--model HUB_ID | FOLDER | FILE.pth] [--out outputs/demo]

The model is `--model`, else $DINOV3KIT_MODEL, else facebook/dinov3-vits16-pretrain-lvd1689m (gated on the
Hugging Face hub). When no weights can be had the demo stops and says how to get them; it never runs on
random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinov3kit.tools import (
    Embedder,
    ModelUnavailableError,
    contact_sheet,
    embed_images,
    pca_images,
    read_index,
    search_index,
)

PHOTOS = Path(__file__).resolve().parent / "photos"
QUERY = PHOTOS / "cat.jpg"
PCA_PHOTOS = [PHOTOS / "astronaut.jpg", PHOTOS / "cat.jpg"]
PCA_RESOLUTION = 768


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id, transformers folder or Meta .pth (default: $DINOV3KIT_MODEL or the ViT-S/16 hub id)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the outputs (default outputs/demo)")
    args = parser.parse_args(argv)

    try:
        embedder = Embedder.load(args.model)
    except ModelUnavailableError as error:
        print(f"The demo cannot run: no DINOv3 weights could be loaded.\n{error}", file=sys.stderr)
        print("Then run again: make demo MODEL=/path/to/checkpoint (or set DINOV3KIT_MODEL).", file=sys.stderr)
        return 1
    print(f"model: {embedder.source} on {embedder.device} ({str(embedder.dtype).removeprefix('torch.')})")

    index_path = args.out / "photos.parquet"
    summary = embed_images([PHOTOS], index_path, embedder=embedder, overwrite=True)
    print(f"embed: {summary.embedded} photos ({summary.images_per_second:.1f} img/s)")

    index = read_index(index_path)
    (result,) = search_index(index, [str(QUERY)], k=4, embedder=embedder)
    print(f"search: nearest photos to {QUERY.name}:")
    for hit in result.hits:
        print(f"  #{hit.rank}  {hit.score:.3f}  {Path(hit.path).name}")
    sheet_path = args.out / "search.png"
    contact_sheet([(result.image, [(h.path, f"#{h.rank}  {h.score:.3f}") for h in result.hits])]).save(sheet_path)

    dense = Embedder(embedder.model, embedder.source, resolution=PCA_RESOLUTION)
    pca_paths = [args.out / f"{photo.stem}_pca.png" for photo in PCA_PHOTOS]
    for picture, path in zip(pca_images(dense, PCA_PHOTOS), pca_paths):
        picture.save(path)
    print(f"pca: {len(pca_paths)} pictures at shortest side {PCA_RESOLUTION} px (one shared basis)")

    print("\nOutputs:")
    for label, path in [("index (Parquet)", index_path), ("search contact sheet", sheet_path)] + [("PCA picture", p) for p in pca_paths]:
        print(f"  {label:22s} {path.resolve()}")
    model = f" --model {args.model}" if args.model else ""
    print(
        "\nThe same from the command line:\n"
        f"  dinov3kit embed {PHOTOS}{model} -o {index_path}\n"
        f"  dinov3kit search {index_path} {QUERY} -k 4 --grid {sheet_path}\n"
        f"  dinov3kit pca {' '.join(map(str, PCA_PHOTOS))}{model} --resolution {PCA_RESOLUTION} -o {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
