"""An OpenAI fine-tuning script, as the OpenAI docs and cookbook write it, pointed at tunesmith.

The only change from a script that ran against api.openai.com is `base_url` (and any key will do on
an open server). Start the server first, from the repository root:

    tunesmith serve --workers 1 --base-model gpt-4o-mini-2024-07-18=smollm2-135m

then run:  python examples/openai_migration/finetune.py
"""

import time
from pathlib import Path

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-anything")  # was: OpenAI()

# 1. Upload the training data (OpenAI's chat format: one {"messages": [...]} per line).
training_file = client.files.create(file=open(Path(__file__).with_name("marv.jsonl"), "rb"), purpose="fine-tune")
print("uploaded", training_file.id)

# 2. Create the job.
job = client.fine_tuning.jobs.create(training_file=training_file.id, model="gpt-4o-mini-2024-07-18", suffix="marv",
                                     hyperparameters={"n_epochs": 3})
print("created", job.id, job.status)

# 3. Poll until it is done, printing new events as they come.
seen = set()
while job.status not in ("succeeded", "failed", "cancelled"):
    time.sleep(5)
    job = client.fine_tuning.jobs.retrieve(job.id)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=20).data):
        if event.id not in seen:
            seen.add(event.id)
            print(event.message)
print("status:", job.status, "model:", job.fine_tuned_model)
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")

# 4. Use the fine-tuned model.
completion = client.chat.completions.create(
    model=job.fine_tuned_model,
    messages=[{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
              {"role": "user", "content": "What is the capital of Italy?"}],
)
print(completion.choices[0].message.content)
