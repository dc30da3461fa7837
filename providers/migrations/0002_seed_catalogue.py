from django.db import migrations


def seed(apps, schema_editor):
    from providers.catalogue import seed as seed_rows

    seed_rows(apps.get_model("providers", "Provider"), apps.get_model("providers", "ModelConfig"))


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
