"""Asset jobs, one per modality: what sensors and schedules launch (each includes the asset's checks)."""
import dagster as dg


#: Embeds one batch folder of text documents.
embed_text_job = dg.define_asset_job(
    "embed_text_job", selection=dg.AssetSelection.assets("text_embeddings")
)
#: Embeds one batch folder of images.
embed_images_job = dg.define_asset_job(
    "embed_images_job", selection=dg.AssetSelection.assets("image_embeddings")
)

JOBS_BY_MODALITY = {"text": embed_text_job, "images": embed_images_job}
#: The embedding asset of each modality.
ASSET_BY_MODALITY = {"text": "text_embeddings", "images": "image_embeddings"}
