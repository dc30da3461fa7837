# Rows seeded by 0002 predate `supports_tools` (0008 added it with default False) and
# catalogue.seed never overwrites a row, so no install gets the catalogue's flag without this.
from django.db import migrations

TOOL_SLUGS = ("llama-3.2-3b", "llama-3.2-11b-vision")


def forwards(apps, schema_editor):
    ModelConfig = apps.get_model("providers", "ModelConfig")
    ModelConfig.objects.filter(slug__in=TOOL_SLUGS, provider__kind="cloudflare").update(
        supports_tools=True)


class Migration(migrations.Migration):
    dependencies = [("providers", "0008_model_supports_tools")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
