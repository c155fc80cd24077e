"""The two Cradle2Cane passes as three nodes: AdaNI First Pass, Identity Embed, Identity Second Pass."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from .common import (SEED_MAX, model_handle, model_input, pick, reference_inference_input, seed_input,
                     source_attributes, source_inputs)
from .handles import AgingHandle, C2CAging, C2CIdentity, FacesHandle, IdentityHandle, ModelHandle, expect
from .layout import optional_value, parse_ages, to_comfy, to_core
from .progress import step_callback

FIRST_PASS = "AdaNI First Pass"
IDENTITY = "Identity Embed (SVR-ArcFace/Rotate-CLIP)"
SECOND_PASS = "Identity Second Pass"
MODEL_DEFAULT = "model default"
SVR = {MODEL_DEFAULT: None, "on": True, "off": False}


def target_ages_input() -> io.Input:
    return io.String.Input("target_ages", default="70",
                           tooltip="Target age(s) in years, 0..100: one ('70'), a list ('20, 40, 60') or a range "
                                   "('10-80:10'). N faces x M ages give N*M images, face by face.")


class AdaNIFirstPass(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_AdaNIFirstPass",
            display_name=FIRST_PASS,
            category="cradle2cane/aging",
            description="Pass 1 (AdaNI): SDXL-Turbo img2img with the LoRA off, prompted with the target age and "
                        "gender; the noise strength grows with the age gap (0.25/0.5/0.75). Gives the aged "
                        "image and the data Identity Embed and Identity Second Pass need.",
            inputs=[
                model_input(),
                io.Image.Input("image", tooltip="Aligned face crops (Face Align's 'aligned' output, or FFHQ-style "
                                                "crops); any batch size."),
                target_ages_input(),
                *source_inputs(),
                seed_input(),
                io.Float.Input("strength", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = adaptive (AdaNI, from the age gap); otherwise a fixed img2img strength "
                                       "for every item (the reference uses 0.75 for extra prompt text)."),
                reference_inference_input(),
            ],
            outputs=[
                io.Image.Output("aged", display_name="aged", tooltip="Pass-1 images, N faces x M ages, face by face."),
                C2CAging.Output("aging", display_name="aging", tooltip="Pass-1 data for the identity nodes."),
            ],
        )

    @classmethod
    def execute(cls, model: ModelHandle, image: torch.Tensor, target_ages: str, source_age: int, gender: str,
                seed: int, strength: float, faces: FacesHandle | None = None,
                reference_inference: bool | None = None) -> io.NodeOutput:
        handle = model_handle(model, FIRST_PASS)
        batch = to_core(image, FIRST_PASS, "image")
        targets = parse_ages(target_ages, FIRST_PASS)
        sources, genders = source_attributes(batch.shape[0], source_age, gender, faces, FIRST_PASS)
        first = handle.ready().first_pass(batch, targets, sources, genders, seed=seed,
                                          strength=optional_value(strength), callback=step_callback(),
                                          reference_inference=bool(reference_inference))
        return io.NodeOutput(to_comfy(first.aged), AgingHandle(first))


class IdentityEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_IdentityEmbed",
            display_name=IDENTITY,
            category="cradle2cane/aging",
            description="Identity conditioning for pass 2: an SVR-ArcFace token (ArcFace features of the input "
                        "and the aged face, singular values reweighted) and a Rotate-CLIP token (the CLIP image "
                        "feature turned from the source age's text towards the target age's), both projected "
                        "to the UNet's width.",
            inputs=[
                model_input(),
                io.Image.Input("source", tooltip="The aligned faces that went into AdaNI First Pass (same batch)."),
                io.Image.Input("aged", tooltip="AdaNI First Pass's 'aged' images (or an edited version of them)."),
                C2CAging.Input("aging", tooltip="AdaNI First Pass's 'aging' output."),
                io.Combo.Input("svr", options=list(SVR), default=MODEL_DEFAULT,
                               tooltip="SVR-ArcFace (mix in the aged face's ArcFace features); model default = "
                                       "use_swr in hparams.yml."),
                io.Combo.Input("clip_rotation", options=[MODEL_DEFAULT, "angle", "vector"], default=MODEL_DEFAULT,
                               tooltip="Rotate-CLIP method: angle (slerp half-way, the released default) or vector "
                                       "(target minus source text feature); model default = hparams.yml."),
                io.Float.Input("swr_alpha", default=-1.0, min=-1.0, max=1.0, step=0.001,
                               tooltip="SVR reweighting exponent alpha; -1 = hparams.yml (released: 0.01)."),
                io.Float.Input("swr_beta", default=-1.0, min=-1.0, max=10.0, step=0.01,
                               tooltip="SVR reweighting scale beta; -1 = hparams.yml (released: 1.1)."),
            ],
            outputs=[C2CIdentity.Output("identity", display_name="identity", tooltip="Pass-2 identity conditioning.")],
        )

    @classmethod
    def execute(cls, model: ModelHandle, source: torch.Tensor, aged: torch.Tensor, aging: AgingHandle, svr: str,
                clip_rotation: str, swr_alpha: float, swr_beta: float) -> io.NodeOutput:
        handle = model_handle(model, IDENTITY)
        aging = expect(aging, AgingHandle, IDENTITY, "aging")
        conditioning = handle.ready().identity_embeddings(
            to_core(source, IDENTITY, "source"), aging.first, aged=to_core(aged, IDENTITY, "aged"),
            use_swr=pick(SVR, svr, IDENTITY, "svr"),
            clip_method=None if clip_rotation == MODEL_DEFAULT else clip_rotation,
            swr_alpha=optional_value(swr_alpha, -1.0), swr_beta=optional_value(swr_beta, -1.0))
        return io.NodeOutput(IdentityHandle(conditioning.detach().cpu(), aging.first))


class IdentitySecondPass(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_IdentitySecondPass",
            display_name=SECOND_PASS,
            category="cradle2cane/aging",
            description="Pass 2: img2img on the aged images with the identity LoRA on, conditioned on the "
                        "identity tokens, so the aged face looks like the same person again.",
            inputs=[
                model_input(),
                io.Image.Input("aged", tooltip="AdaNI First Pass's 'aged' images (same batch as 'aging')."),
                C2CIdentity.Input("identity", tooltip="Identity Embed's output for the same pass-1 run."),
                C2CAging.Input("aging", tooltip="AdaNI First Pass's 'aging' output."),
                io.Int.Input("seed", default=-1, min=-1, max=SEED_MAX, control_after_generate=False,
                             tooltip="Noise seed; -1 = the seed pass 1 used (what the all-in-one node does)."),
                io.Float.Input("id_strength", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="img2img strength of the identity pass; 0 = hparams.yml (released: 0.25, "
                                       "one UNet step)."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="The final aged faces, same order as 'aged'.")],
        )

    @classmethod
    def execute(cls, model: ModelHandle, aged: torch.Tensor, identity: IdentityHandle, aging: AgingHandle, seed: int,
                id_strength: float) -> io.NodeOutput:
        handle = model_handle(model, SECOND_PASS)
        identity = expect(identity, IdentityHandle, SECOND_PASS, "identity")
        aging = expect(aging, AgingHandle, SECOND_PASS, "aging")
        first, other = aging.first, identity.first
        if first is not other and (other.target_ages != first.target_ages or other.source_index != first.source_index):
            raise ValueError(f"{SECOND_PASS}: 'identity' was computed for another pass-1 run ({len(other)} items, "
                             f"ages {other.target_ages}) than 'aging' ({len(first)} items, ages {first.target_ages}); "
                             f"connect the same AdaNI First Pass output to Identity Embed and to this node")
        images = handle.ready().second_pass(first, identity.conditioning, aged=to_core(aged, SECOND_PASS, "aged"),
                                            seed=None if seed < 0 else seed, id_strength=optional_value(id_strength),
                                            callback=step_callback())
        return io.NodeOutput(to_comfy(images))
