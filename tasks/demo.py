"""The demo's Mixture over the generated corpus (`pipelines.generate_corpus`).

    tapestry_demo = captions + spoken digits + video QA (open-ended and multiple
                    choice) + interleaved documents + text LM (books or generated)

Rates are proportional, in examples, balanced over the three media skills
(captions, digits, video direction) by how slowly each was learned in trial runs. Text-LM and interleaved examples are long (a text example fills most
of a 256-token row), so small rates still give them a fair share of tokens:
with these rates text is about a sixth of the tokens trained on.
"""

from tasks import multimodal

DEMO_MIXTURE = "tapestry_demo"
DEMO_RATES = {
    "tapestry_mm_captions": 2.0,
    "tapestry_mm_speech_manifest": 1.3,
    "tapestry_mm_nextqa": 1.0,
    "tapestry_mm_activitynet_qa": 0.6,
    "tapestry_mm_interleaved": 0.25,
    multimodal.TEXT_LM_TASK: 0.2,
}

multimodal.register_mixture(DEMO_MIXTURE, DEMO_RATES)
