"""The demo's Mixture over the generated corpus (`pipelines.generate_corpus`).

    tapestry_demo = captions + spoken digits + video QA (open-ended and multiple
                    choice) + interleaved documents + text LM (books or generated)

Rates are proportional. Speech gets the largest share: transcribing digits from
log-mel frames is the hardest of the demo's skills for a tiny model; the video
tasks share one set of videos and count as one skill between them.
"""

from tasks import multimodal

DEMO_MIXTURE = "tapestry_demo"
DEMO_RATES = {
    "tapestry_mm_captions": 1.0,
    "tapestry_mm_speech_manifest": 2.0,
    "tapestry_mm_nextqa": 0.5,
    "tapestry_mm_activitynet_qa": 0.5,
    "tapestry_mm_interleaved": 0.5,
    multimodal.TEXT_LM_TASK: 1.0,
}

multimodal.register_mixture(DEMO_MIXTURE, DEMO_RATES)
