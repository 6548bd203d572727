"""The fleet reference application: devices, sites and dispatch services."""
