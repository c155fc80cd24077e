"""The shipped node ids and their display names (the user's names: never change them)."""

NODE_NAMES = {
    "C2C_LoadCradle2Cane": "Load Cradle2Cane",
    "C2C_FaceAlign": "Face Align",
    "C2C_AdaNIFirstPass": "AdaNI First Pass",
    "C2C_IdentityEmbed": "Identity Embed (SVR-ArcFace/Rotate-CLIP)",
    "C2C_IdentitySecondPass": "Identity Second Pass",
    "C2C_PasteFaceBack": "Paste Face Back",
    "C2C_LifespanSweep": "Lifespan Sweep",
    "C2C_AgePhoto": "Cradle2Cane Age Photo",
}
